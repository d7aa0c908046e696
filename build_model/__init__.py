"""tinysense build side: dataset -> Keras model -> quantized variants -> report -> bundle."""


from contract.errors import TinysenseError, UsageError as _Usage


class BuildError(TinysenseError):
    """A problem the user can fix; the CLI prints it as one line and exits 1."""


class UsageError(BuildError, _Usage):
    """A bad command line (unknown dataset or variant); exit code 2."""
