"""`invoke sandbox`: the endpoint with SageMaker played, in the foreground or as a background process.

Its state lives in .sandbox/ of this checkout (git-ignored): the pid file, the background log and
the jobs' /opt/ml trees. Per checkout rather than in the user's cache: the trees belong next to
the runs/ they turn into, `invoke sandbox --stop` finds the sandbox this checkout started, and
deleting a clone leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from project.sandbox import DEFAULT_HOST, STATE_DIR
from project.sandbox.container import container_problem
from project.sandbox.ecr_iam import LocalImages
from project.sandbox.endpoint import Endpoint
from project.sandbox.optml import SandboxError
from project.sandbox.run import RunOptions
from project.sandbox.service import SageMakerService

ROOT = Path(__file__).resolve().parent.parent.parent
PID_FILE, LOG_FILE, JOBS_DIR = "sandbox.pid", "sandbox.log", "jobs"
START_TIMEOUT_SECONDS = 120.0  # importing moto and binding the port; seconds on a busy laptop
STOP_TIMEOUT_SECONDS = 60.0  # running jobs are killed, their results uploaded, then it exits
POLL_SECONDS = 0.1
# Credentials the sandbox's own clients (and its jobs) use when the shell has none: moto takes any.
TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}

BACKGROUND_STOP_HINT = "`invoke sandbox --stop` stops it"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class Settings:
    port: int
    run_jobs: bool = True
    host: str = DEFAULT_HOST
    state_dir: Path = ROOT / STATE_DIR

    @property
    def pid_file(self) -> Path:
        return self.state_dir / PID_FILE

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / JOBS_DIR


def _shown(path: Path) -> str:
    """A path as the user would type it from here."""
    try:
        return f"{path.relative_to(Path.cwd())}/"
    except ValueError:
        return f"{path}/"


def why_jobs_are_recorded_only(settings: Settings) -> str | None:
    """None if the sandbox runs the jobs it records; else the reason it cannot or will not."""
    return "--no-jobs was given" if not settings.run_jobs else container_problem()


def banner(url: str, settings: Settings, recorded_only: str | None, stop_hint: str) -> str:
    jobs = (
        f"SageMaker jobs are only recorded, not run: {recorded_only}"
        if recorded_only
        else f"SageMaker jobs run on this machine (their /opt/ml trees in {_shown(settings.jobs_dir)})"
    )
    jobs += "; endpoints and transform jobs are served by their models"
    host = url.split("//", 1)[1].rsplit(":", 1)[0]
    return (
        f"sandbox: AWS at {url}; {jobs}; point the tasks and tflocal at it with "
        f"`export AWS_ENDPOINT_URL={url} S3_HOSTNAME={host}` (or the override aws.endpoint_url={url}); {stop_hint}"
    )


def _aws_env(url: str) -> dict[str, str]:
    credentials = {k: os.environ.get(k) or v for k, v in TEST_CREDENTIALS.items()}
    return {"AWS_ENDPOINT_URL": url, **credentials}


@contextmanager
def serving(settings: Settings) -> Iterator[tuple[str, str | None]]:
    """The endpoint, SageMaker played (jobs run where they can) and local images; yields (url, why not run)."""
    recorded_only = why_jobs_are_recorded_only(settings)
    with ExitStack() as stack:
        endpoint = stack.enter_context(Endpoint(settings.host, settings.port))
        options = RunOptions(env_extra=_aws_env(endpoint.url))
        service = SageMakerService(not recorded_only, settings.jobs_dir, endpoint.url, options)
        service.__enter__()
        stack.callback(service.close, stop_running=True)  # before the endpoint goes: runs upload their results
        stack.enter_context(LocalImages())
        yield endpoint.url, recorded_only


def _wait_for_stop() -> None:
    """Until Ctrl-C (SIGINT) or SIGTERM (`invoke sandbox --stop`)."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(POLL_SECONDS * 5):  # a timed wait, so Ctrl-C is seen at once
            pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(settings: Settings, echo: Echo = print, stop_hint: str = "Ctrl-C stops it") -> None:
    """Serve in this process until Ctrl-C or SIGTERM; with a pid file when started in the background."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request would bury the banner
    with serving(settings) as (url, recorded_only):
        try:
            echo(banner(url, settings, recorded_only, stop_hint))
            _write_pid_file(settings, url)
            _wait_for_stop()
        except KeyboardInterrupt:
            pass  # Ctrl-C is how it stops, from the moment its banner says so
        finally:
            echo("sandbox: stopping (running jobs are killed and end Stopped)")
            _remove_pid_file(settings)
    echo("sandbox: stopped")


# --- the background process and its pid file --------------------------------------------------


def _write_pid_file(settings: Settings, url: str) -> None:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    scratch = settings.pid_file.with_suffix(".tmp")
    scratch.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    scratch.replace(settings.pid_file)  # whoever waits for it never reads half a file


def _remove_pid_file(settings: Settings) -> None:
    try:
        if json.loads(settings.pid_file.read_text())["pid"] == os.getpid():
            settings.pid_file.unlink()
    except (OSError, ValueError, KeyError):
        pass


def _is_sandbox(pid: int) -> bool:
    """The process is alive and is a sandbox (a pid in a stale file may have been reused)."""
    try:
        return b"project.sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running_sandbox(settings: Settings) -> dict[str, object] | None:
    """The pid file's {"pid", "url"} if that sandbox still runs; a stale file is removed."""
    try:
        state = json.loads(settings.pid_file.read_text())
    except (OSError, ValueError):
        return None
    if _is_sandbox(int(state["pid"])):
        return dict(state)
    settings.pid_file.unlink(missing_ok=True)
    return None


def _child_argv(settings: Settings) -> list[str]:
    argv = [sys.executable, "-u", "-m", "project.sandbox", "--port", str(settings.port), "--host", settings.host]
    return argv + ([] if settings.run_jobs else ["--no-jobs"])


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("error: ") if lines else "no output"


def _wait_until_ready(child: subprocess.Popen[bytes], settings: Settings, log: Path) -> dict[str, object]:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = running_sandbox(settings)
        if state is not None and state["pid"] == child.pid:
            return state
        if child.poll() is not None:
            raise SandboxError(f"the sandbox did not start: {_last_line(log)} (log: {_shown(log).rstrip('/')})")
        time.sleep(POLL_SECONDS)
    child.terminate()
    raise SandboxError(f"the sandbox did not start within {START_TIMEOUT_SECONDS:.0f} s; see {log}")


def start_background(settings: Settings, echo: Echo = print) -> int:
    """Start `python -m project.sandbox` detached; return once it serves (its pid file is written)."""
    existing = running_sandbox(settings)
    if existing is not None:
        raise SandboxError(
            f"a sandbox from this checkout already runs at {existing['url']} (pid {existing['pid']}): "
            "`invoke sandbox --stop` stops it"
        )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = settings.state_dir / LOG_FILE
    with log.open("wb") as out:
        child = subprocess.Popen(
            _child_argv(settings), cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this shell, or its exit, leaves the sandbox running
        )  # fmt: skip
    _wait_until_ready(child, settings, log)
    echo(f"{_last_line(log)} (pid {child.pid}, log {_shown(log).rstrip('/')})")
    return child.pid


def stop_background(settings: Settings, echo: Echo = print) -> None:
    """SIGTERM to the sandbox of the pid file; wait until it has exited."""
    state = running_sandbox(settings)
    if state is None:
        raise SandboxError(
            f"no sandbox runs from this checkout (no live pid in {_shown(settings.pid_file).rstrip('/')})"
        )
    pid = int(str(state["pid"]))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _is_sandbox(pid):
        if time.monotonic() > deadline:
            raise SandboxError(f"the sandbox (pid {pid}) did not exit within {STOP_TIMEOUT_SECONDS:.0f} s; kill {pid}")
        time.sleep(POLL_SECONDS)
    echo(f"sandbox: stopped (pid {pid}, {state['url']})")


# moto[server]: the endpoint and its web server. A dev tool: requirements-dev.txt, not requirements.txt.
SERVER_MODULES = ("moto", "flask", "flask_cors")


def check_installed() -> None:
    """One line naming what to install, before anything starts, when moto[server] is missing."""
    missing = [name for name in SERVER_MODULES if not _importable(name)]
    if missing:
        raise SandboxError(
            f"invoke sandbox needs moto[server] (missing here: {', '.join(missing)}), a dev tool that "
            "requirements.txt leaves out: pip install -r requirements-dev.txt"
        )


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a finder that knows it is missing says so instead of None
        return False


def main(port: int, background: bool = False, stop: bool = False, run_jobs: bool = True) -> None:
    """What `invoke sandbox` does: serve here, start in the background, or stop the background one."""
    settings = Settings(port=port, run_jobs=run_jobs)
    if not stop:
        check_installed()
    if stop:
        stop_background(settings)
    elif background:
        start_background(settings)
    else:
        serve(settings)
