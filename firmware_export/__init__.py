"""tinysense firmware export: a full-int8 .tflite -> verified C sources for TensorFlow Lite Micro."""


class ExportError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""
