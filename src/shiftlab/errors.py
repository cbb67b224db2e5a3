"""The one error type users see: a one-line message saying what is wrong and what to do."""


class ShiftlabError(ValueError):
    """Bad input to shiftlab (a shape, a name, a file, a shift). The CLI prints it on one
    line and exits with status 2; library callers can catch it as a ``ValueError``."""
