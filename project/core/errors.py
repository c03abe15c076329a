"""The one base class for mistakes a user can fix: tasks print its message (one line) and exit 2."""

import signal

# Exit codes a process of this project ends with besides 0 and 1, the same in every entry point.
USER_ERROR_EXIT = 2  # a UserError, printed as one `error: ...` line
# The watchdog ended a run whose ranks made no progress (project/training/watchdog.py); 124 as
# coreutils' timeout says "timed out".
STALLED_EXIT = 124
INTERRUPTED_EXIT = 130  # 128 + SIGINT, the shell's convention for "stopped by Ctrl-C"
# A run stopped at a step boundary with a checkpoint by SIGTERM (or the death of the command that
# started it) or SIGHUP (its terminal closed): 128 + the signal, as a shell reports it. A stopped
# run is not a success, except in a SageMaker container, where the platform decides (checkpoints.py).
TERMINATED_EXIT = 128 + signal.SIGTERM
HANGUP_EXIT = 128 + signal.SIGHUP


class UserError(Exception):
    """Bad input or missing setup; str(error) says what is wrong and how to fix it."""
