"""The one base class for mistakes a user can fix: tasks print its message (one line) and exit 2."""

# Exit codes a process of this project ends with besides 0 and 1, the same in every entry point.
USER_ERROR_EXIT = 2  # a UserError, printed as one `error: ...` line
INTERRUPTED_EXIT = 130  # 128 + SIGINT, the shell's convention for "stopped by Ctrl-C"


class UserError(Exception):
    """Bad input or missing setup; str(error) says what is wrong and how to fix it."""
