"""tinysense firmware export: a full-int8 .tflite -> verified C sources for TensorFlow Lite Micro."""


from contract.errors import TinysenseError


class ExportError(TinysenseError):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""
