"""A training job's CloudWatch log: its streams (one per instance), their first and last lines, the
new lines as they come, and each host's sm_train.sh set-up folded into one line for the streamed view.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from project.core.sagemaker_names import LOG_GROUP


def log_streams(logs, job_name: str) -> list[str]:
    """The job's CloudWatch log streams, `<job>/algo-N-<epoch>`: one per instance."""
    try:
        response = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_name}/")
    except logs.exceptions.ResourceNotFoundException:
        return []
    return sorted(s["logStreamName"] for s in response.get("logStreams", []))


def last_lines(logs, job_name: str, limit: int) -> dict[str, list[str]]:
    """The last `limit` lines of each of the job's log streams (stream name -> lines, oldest first)."""
    tails = {}
    for stream in log_streams(logs, job_name):
        response = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=stream, startFromHead=False, limit=limit)
        tails[stream] = [event["message"].rstrip("\n") for event in response.get("events", [])]
    return tails


HEAD_PAGES = 5  # GetLogEvents pages (up to 10,000 lines each) read from a stream's head, at most


def head_lines(
    logs, stream: str, keep: Callable[[str], bool], until: Callable[[str], bool], pages: int = HEAD_PAGES
) -> list[str]:
    """The lines of a stream, from its head, that `keep` accepts, up to the first that `until` accepts
    (a start-up's last marker: a long job's log is not read to its end)."""
    kept: list[str] = []
    kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
    for _ in range(pages):
        response = logs.get_log_events(**kwargs)
        for event in response.get("events", []):
            line = event["message"].rstrip("\n")
            if keep(line):
                kept.append(line)
            if until(line):
                return kept
        token = response.get("nextForwardToken")
        if not response.get("events") or token == kwargs.get("nextToken"):
            break
        kwargs["nextToken"] = token
    return kept


class LogTail:
    """New CloudWatch log lines of one job, across its streams (one per instance)."""

    def __init__(self, logs, job_name: str):
        self.logs, self.job_name = logs, job_name
        self.tokens: dict[str, str | None] = {}

    def poll(self) -> Iterator[str]:
        for _, _, message in self.poll_events():
            yield message

    def poll_events(self) -> Iterator[tuple[str, int, str]]:
        """(stream, timestamp in ms, line) of each new event."""
        for stream in log_streams(self.logs, self.job_name):
            kwargs = {"logGroupName": LOG_GROUP, "logStreamName": stream, "startFromHead": True}
            if self.tokens.get(stream):
                kwargs["nextToken"] = self.tokens[stream]
            while True:
                response = self.logs.get_log_events(**kwargs)
                for event in response.get("events", []):
                    yield stream, event.get("timestamp", 0), event["message"].rstrip("\n")
                token = response.get("nextForwardToken")
                if not response.get("events") or token == kwargs.get("nextToken"):
                    self.tokens[stream] = token
                    break
                kwargs["nextToken"] = self.tokens[stream] = token


# The SDK's sm_train.sh prints its set-up before our command on every host: the Python version,
# resourceconfig.json and inputdataconfig.json, the environment it exports, and for job.image=aws
# pip's `Requirement already satisfied` for each pin: ~110 lines before the first of training.
# The streamed view (`invoke train`, `invoke logs --follow`) folds them into one line; CloudWatch
# and `invoke logs` keep every line.
SETUP_START = "Starting training script"
SETUP_END = "Executing command: "  # sm_train.sh runs the job's command (project/aws/plan.py) next
SETUP_FAILED = "An error occurred with exit code"  # sm_train.sh's ERR trap: the set-up itself failed
XTRACE = "+"  # bash's trace of sm_train.sh's own commands (`++ eval ...`), up to the command's first line
ALREADY_INSTALLED = "Requirement already satisfied: "
INSTALLED = "Successfully installed "


def setup_summary(events: list[tuple[int, str]]) -> str:
    """One line for a set-up's (timestamp in ms, line) events: what pip did and how long it took."""
    already = sum(line.startswith(ALREADY_INSTALLED) for _, line in events)
    installed = sum(len(line[len(INSTALLED) :].split()) for _, line in events if line.startswith(INSTALLED))
    parts = [f"{installed} packages installed"] if installed else []
    if already:
        parts.append(f"{already} {'' if installed else 'packages '}already installed")
    seconds = (events[-1][0] - events[0][0]) / 1000
    return f"set-up: {', '.join([*parts, f'{seconds:.1f} s'])}"


class SetupFold:
    """Each log stream's sm_train.sh set-up as one summary line; every other line as it is.

    The set-up runs from its first line to the job's command (its trace lines included). One that
    fails (the ERR trap fires) or never reaches the command (the job ended) is shown whole: then
    its lines are the reason.
    """

    def __init__(self) -> None:
        self.held: dict[str, list[tuple[int, str]]] = {}
        self.ended: set[str] = set()  # streams whose set-up reached the command: only its trace is left

    def feed(self, stream: str, timestamp_ms: int, line: str) -> list[str]:
        held = self.held.get(stream)
        if held is None:
            if line.strip() == SETUP_START:
                self.held[stream] = [(timestamp_ms, line)]
                return []
            return [line]
        if stream in self.ended and not line.startswith(XTRACE):
            return [self._close(stream), line]
        held.append((timestamp_ms, line))
        if line.startswith(SETUP_END):
            self.ended.add(stream)
        elif line.startswith(SETUP_FAILED):
            del self.held[stream]
            return [held_line for _, held_line in held]
        return []

    def _close(self, stream: str) -> str:
        self.ended.discard(stream)
        return setup_summary(self.held.pop(stream))

    def flush(self) -> list[str]:
        """What is still held: a set-up that reached the command as its summary, any other as it is."""
        lines = []
        for stream in list(self.held):
            lines += [self._close(stream)] if stream in self.ended else [line for _, line in self.held.pop(stream)]
        return lines
