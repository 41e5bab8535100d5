"""User-facing errors: the CLIs print their message and exit non-zero, without a traceback."""


class GeoguessError(Exception):
    """An error caused by the user's input or settings, with a message that says how to fix it."""

    #: the exit status of a command that stops on this error
    exit_code = 2
