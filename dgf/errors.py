"""The one exception type that the command-line tools turn into a clean message."""


class DgfError(Exception):
    """A problem with the user's input or environment, explained in the message.

    Command-line entry points print the message (no traceback) and exit non-zero.
    """
