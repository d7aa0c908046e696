"""tinysense build side: dataset -> Keras model -> quantized variants -> report -> bundle."""


class BuildError(Exception):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""


class UsageError(BuildError):
    """A bad command line (unknown dataset or variant); exit code 2."""
