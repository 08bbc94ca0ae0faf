"""The one exception type that the command-line tools turn into a clean message, and
the one way such a message quotes a library's exception."""


class DgfError(Exception):
    """A problem with the user's input or environment, explained in the message.

    Command-line entry points print the message (no traceback) and exit non-zero.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), or its type's
    name when it has none: what a one-line error quotes of a library's exception."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
