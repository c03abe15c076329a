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


def interrupt_handled() -> None:
    """Have the interpreter end with the exit code given after a KeyboardInterrupt was caught.

    CPython remembers a KeyboardInterrupt that left code exec()'d from a string (dataclasses and
    namedtuples build their methods so, many times over during imports) even once it is caught,
    and a `python -m` process then ends by SIGINT at exit whatever sys.exit said: -2 for a caller,
    not INTERRUPTED_EXIT (Py_RunMain's _Py_UnhandledKeyboardInterrupt). The next exec() of a string
    clears that memory, so one here does. Harmless everywhere else.
    """
    exec("None")  # noqa: S102 (a constant string)


class UserError(Exception):
    """Bad input or missing setup; str(error) says what is wrong and how to fix it."""
