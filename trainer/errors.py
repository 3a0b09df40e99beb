"""Errors that carry a sentence for the user."""


class UserError(Exception):
    """Bad input from the user: a path, a name, a schedule string. The message is shown as is, no traceback."""
