"""One exception root for all of tinysense, and the kinds every command line maps to exit codes."""


class TinysenseError(Exception):
    """A problem the user can fix: every command prints it as one line and exits 1."""


class UsageError(TinysenseError):
    """A bad command line: exit 2."""


class ContractError(TinysenseError):
    """A bundle, a .tflite, a wire message or an option that breaks the contract; one line, exit 1."""
