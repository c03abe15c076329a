"""The container run: the job's entry point as PID 1 of private mount and PID namespaces.

As in a container, a stop (or MaxRuntime) sends SIGTERM to PID 1 alone, then SIGKILL after the
grace period (120 s on SageMaker). The mount point /opt/ml is created on this machine if missing
and stays empty: each job's tree is mounted there only inside its own namespace. The container's
lines go to CloudWatch Logs as the SageMaker agent sends them.

A container dies with the sandbox (killed, or its terminal closed): `unshare` gets SIGKILL when
the thread that started it (the job's, which waits for it) ends, and takes its namespace with it
(--kill-child). Not a SIGTERM and a checkpoint: the sandbox uploads a job's checkpoints to S3 when
the container has ended, and its S3 ends with it, so a checkpoint saved then would reach no one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from project.core.process import dying_with_this_thread
from project.core.sagemaker_names import LOG_GROUP
from project.sandbox.optml import CONTAINER_ROOT

STOP_GRACE_SECONDS = 120.0  # SageMaker's delay between SIGTERM and SIGKILL
LOG_FLUSH_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 30


def hosts_file(hosts: Sequence[str]) -> str:
    """/etc/hosts of a job's containers: every instance's name on this machine's loopback.

    The containers share this machine's network namespace (one loopback), so algo-2 reaches
    algo-1's rendezvous as on SageMaker's cluster network, by name."""
    return "127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {host}\n" for host in hosts)


def namespace_argv(
    tree: Path, command: list[str], read_only: Sequence[tuple[Path, str]] = (), etc_hosts: Path | None = None
) -> list[str]:
    """`command` as PID 1 of new mount and PID namespaces, with `tree` bind-mounted at /opt/ml, and
    each (folder, path in the container) of `read_only` bound there read-only (a file system channel:
    SageMaker mounts it read-only, and a job writing to it must fail here as it would there);
    `etc_hosts`, if given, bound over /etc/hosts (hosts_file)."""
    # Without root, a user namespace (mapping this user to root) grants the mount and PID namespaces.
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = 'mount --bind "$1" ' + CONTAINER_ROOT
    for folder, inside in read_only:
        target = shlex.quote(inside)
        script += f" && mount --bind {shlex.quote(str(folder))} {target} && mount -o remount,bind,ro {target}"
    if etc_hosts is not None:
        script += f" && mount --bind {shlex.quote(str(etc_hosts))} /etc/hosts"
    script += ' && shift && cd / && exec "$@"'
    # --fork makes `command` PID 1 of the new PID namespace, as a container's entry point is.
    namespaces = ["--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private"]
    namespaces.append("--kill-child")  # PID 1 dies with unshare (SIGKILL), and the namespace with PID 1
    return ["unshare", *user, *namespaces, "sh", "-c", script, "sh", str(tree), *command]


def container_problem() -> str | None:
    """None if a job can run on this machine; else why not (tried for real, once per call)."""
    if os.uname().sysname != "Linux":
        return f"jobs need Linux namespaces; this is {os.uname().sysname}"
    if shutil.which("unshare") is None:
        return "`unshare` (util-linux) is not installed"
    try:
        Path(CONTAINER_ROOT).mkdir(parents=True, exist_ok=True)  # the bind-mount target, left empty
    except OSError as exc:
        return f"cannot create the mount point {CONTAINER_ROOT} ({exc.strerror}): create it once with sudo"
    with tempfile.TemporaryDirectory() as probe:
        (Path(probe) / "probe").touch()
        argv = namespace_argv(Path(probe), ["test", "-f", f"{CONTAINER_ROOT}/probe"])
        result = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS)
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        return f"cannot bind-mount {CONTAINER_ROOT} in private namespaces (needs root or user namespaces): {reason}"
    return None


class Container:
    """The running entry point; stop() is `docker stop`: SIGTERM to PID 1, SIGKILL after the grace."""

    def __init__(self, argv: list[str], env: dict[str, str], grace: float):
        self.grace = grace
        self.stop_reason: str | None = None
        self.killer: threading.Timer | None = None
        self.process = subprocess.Popen(
            argv, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=dying_with_this_thread(signal.SIGKILL),  # the job's thread: it waits for the container
        )  # fmt: skip

    @property
    def stdout(self) -> IO[bytes]:
        assert self.process.stdout is not None  # Popen was given stdout=PIPE
        return self.process.stdout

    def _pid1(self) -> int | None:
        """The entry point's host PID: unshare's only child."""
        for _ in range(50):
            try:
                children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
            except OSError:
                return None
            if children:
                return int(children[0])
            time.sleep(0.05)
        return None

    def _signal_pid1(self, signum: int) -> bool:
        pid1 = self._pid1()
        if pid1 is None:
            return False
        try:
            os.kill(pid1, signum)
        except ProcessLookupError:
            return False
        return True

    def stop(self, reason: str) -> None:
        if self.stop_reason is not None or self.process.poll() is not None:
            return
        self.stop_reason = reason
        if not self._signal_pid1(signal.SIGTERM):  # ignored unless PID 1 handles it, as in a container
            return
        self.killer = threading.Timer(self.grace, self.kill)
        self.killer.daemon = True  # never keeps the process alive
        self.killer.start()

    def kill(self) -> None:
        if self.process.poll() is None:
            self._signal_pid1(signal.SIGKILL)  # PID 1 gone: the kernel kills the whole namespace

    def reap(self) -> None:
        """Leave nothing running: kill what is left (the sandbox failed, not the job) and wait."""
        if self.process.poll() is None:
            self.kill()
            self.process.wait()
        if self.killer is not None:
            self.killer.cancel()


class Cluster:
    """The containers of one job's instances: a stop or a kill reaches every one (StopTrainingJob,
    MaxRuntime), and one failing host stops the others (`stop_others`), as SageMaker ends a job."""

    def __init__(self, containers: dict[str, Container]):
        self.containers = containers  # host -> its container
        self.stop_reason: str | None = None  # the job's: set by stop(), not by a failed host

    def stop(self, reason: str) -> None:
        if self.stop_reason is None and any(c.process.poll() is None for c in self.containers.values()):
            self.stop_reason = reason
        for container in self.containers.values():
            container.stop(reason)

    def stop_others(self, failed: str) -> None:
        """A host failed: the job fails, and the hosts still running are stopped (SIGTERM, SIGKILL after the grace)."""
        for host, container in self.containers.items():
            if host != failed:
                container.stop(f"{failed} failed")

    def kill(self) -> None:
        for container in self.containers.values():
            container.kill()


class LogStream:
    """The container's lines into CloudWatch Logs every half second, as the SageMaker agent sends them."""

    def __init__(self, logs: Any, job_name: str, host: str, started: float):
        self.logs, self.name = logs, f"{job_name}/{host}-{int(started)}"
        self.pending: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        try:
            logs.create_log_group(logGroupName=LOG_GROUP)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=self.name)
        self.flusher = threading.Thread(target=self._flush_periodically, daemon=True)
        self.flusher.start()

    def add(self, line: str) -> None:
        if line:  # CloudWatch holds no empty events
            with self.lock:
                self.pending.append({"timestamp": int(time.time() * 1000), "message": line})

    def _flush_periodically(self) -> None:
        while not self.closed.wait(LOG_FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
            if batch:
                self.logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=self.name, logEvents=batch)

    def close(self) -> None:
        self.closed.set()
        self.flusher.join()
        self.flush()
