"""The one base class for mistakes a user can fix: tasks print its message (one line) and exit 2."""


class UserError(Exception):
    """Bad input or missing setup; str(error) says what is wrong and how to fix it."""
