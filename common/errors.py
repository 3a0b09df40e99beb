"""Errors that carry a sentence for the user."""


class UserError(Exception):
    """Bad input from the user: a path, a name, a schedule string. The message is shown as is, no traceback.

    `control` names the setting that would let the action through (e.g. "overwrite"); each interface words it
    its own way (the CLI's `--overwrite`, the page's "Overwrite Old Embedding" checkbox) with `with_hint`."""

    def __init__(self, message: str = "", *, control: str | None = None):
        super().__init__(message)
        self.control = control


def with_hint(error: Exception, hints: dict) -> str:
    """The error's sentence followed by the interface's hint for its control, when it has one."""
    hint = hints.get(getattr(error, "control", None))
    return f"{error} {hint}" if hint else str(error)


def first_line(error: Exception, limit: int = 200) -> str:
    """The first line of an exception's text (its class name when it has none), without a closing full stop, at
    most `limit` characters: the part of a library's error that fits in one of our sentences."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit].rstrip(".")
