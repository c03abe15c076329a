"""The container's launcher: run torchrun as PID 1, so that SIGTERM reaches the training processes
(one process on one host trains in PID 1 itself: see launch()).

A SageMaker job's entry point is the SDK's driver, `/bin/bash sm_train.sh`, and it is PID 1 of
the container. StopTrainingJob and a spot reclaim send SIGTERM to PID 1 alone; bash as PID 1
ignores it, and the SDK's own torchrun driver (a Python process below bash that starts torchrun
as a child) would never see it either: the job would be SIGKILLed two minutes later with no
checkpoint. So the job's command is `exec python3 sm_entry.py --launch` (project/training/sm_entry.py,
staged at the top of the code channel): `exec` makes that Python PID 1, and `launch()` runs
torchrun's own main in it, with sm_entry.py as every worker's script. torchrun handles SIGTERM by
forwarding it to every worker and waiting for them; each worker saves a checkpoint, marks its
clean stop (project/training/checkpoints.py) and exits 0.

torchrun itself then raises SignalException and would exit 1, failing a job that was only
stopped or reclaimed. In-process, launch() catches it: when every worker of this node marked a
clean stop, the container exits 0; a worker that failed or never checkpointed still fails it.

The torchrun command is the SDK torchrun driver's (sagemaker/train/container_drivers/
distributed_drivers/torchrun_driver.py): one node per host, `--nproc_per_node` processes per
node, and for several hosts the master address, port and node rank from SM_HOSTS. torch is
imported only to run torchrun: building the command stays importable anywhere.

The launcher also watches its workers (project/training/watchdog.py): with trainer.stall_timeout_minutes
or startup_timeout_minutes in force (a job's default: conf/trainer/default.yaml), a worker that makes
no progress for that long ends the job with its cause as the FailureReason, instead of billing until
MaxRuntime.

In Pipe mode, with several processes on an instance, the launcher relays each pass of SageMaker's
FIFO to a FIFO of each process (project/training/pipe_relay.py): one FIFO has one reader.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from project.core import startup
from project.core.runtime import CLEAN_STOP_ENV, network_env, sagemaker_env
from project.core.sagemaker_names import DATA_CHANNEL
from project.core.topology import processes_per_node
from project.training.pipe_relay import relayed
from project.training.stalls import HEARTBEAT_ENV, Limits
from project.training.watchdog import Watchdog


def _staged_trainer(config_path: Path) -> dict | None:
    import yaml  # OmegaConf's dependency; the launcher needs a few keys, not a validated config

    try:
        trainer = yaml.safe_load(config_path.read_text())["trainer"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None  # the one process reports what is wrong with the config in one line (train.main)
    return trainer if isinstance(trainer, dict) else None


def staged_processes_per_node(config_path: Path) -> int:
    """One process per GPU of the staged config, whose trainer.gpus the plan decided (project.core.topology):
    the job's command carries no number of its own, so the two can never disagree."""
    trainer = _staged_trainer(config_path)
    try:
        return processes_per_node(int(trainer["gpus"] or 0)) if trainer else 1
    except (KeyError, TypeError, ValueError):
        return 1


def staged_limits(config_path: Path) -> Limits:
    """The watchdog's limits in the staged config (in a container: null is the job_ default)."""
    trainer = _staged_trainer(config_path)
    try:
        return Limits.of(trainer, in_container=True) if trainer else Limits()
    except (TypeError, ValueError):
        return Limits()  # the config check in train.main says what is wrong


def torchrun_argv(
    environ: Mapping[str, str], nproc_per_node: int, script: str, script_args: Sequence[str] = ()
) -> list[str]:
    """`python -m torch.distributed.run ...` for this host of the job (SM_HOSTS, SM_CURRENT_HOST)."""
    sm = sagemaker_env(environ)
    hosts = sm.hosts if sm is not None else ["algo-1"]
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={len(hosts)}",
        f"--nproc_per_node={nproc_per_node}",
    ]
    if sm is not None and len(hosts) > 1:
        argv += [f"--master_addr={sm.master}", f"--master_port={sm.master_port}", f"--node_rank={sm.node_rank}"]
    return argv + [script, *script_args]


def trains_in_pid_1(processes_per_node: int, hosts: int) -> bool:
    """One process on one host needs no torchrun: it trains in the launcher, the container's PID 1."""
    return processes_per_node == 1 and hosts == 1


def launch(
    nproc_per_node: int, script: str, train_here: Callable[[], int] | None = None, limits: Limits | None = None
) -> None:
    """Run torchrun with `script` in this process (PID 1 in the container); exit with its outcome.

    One process on one host needs no torchrun: `train_here()` trains in this process, which is
    PID 1 and gets SIGTERM itself (its checkpoint-on-SIGTERM handler, then exit 0). That skips
    torchrun's own start (importing torch in the launcher, then starting the worker's
    interpreter): 1.3-2 s of every such job's and sweep trial's start on the sandbox.
    """
    if startup.wanted():  # the trace file's marks, and in a job the log's `[startup]` lines
        started = startup.process_started()  # PID 1's: the SDK driver's bash, which exec'd this interpreter
        if started is not None:
            startup.mark("container_start", at=started)
        startup.mark("launcher_ready")
    network_env(os.environ, os.environ.get("SM_NETWORK_INTERFACE_NAME"), os.environ.get("SM_CURRENT_INSTANCE_TYPE"))
    sm = sagemaker_env(os.environ)
    hosts = 1 if sm is None else len(sm.hosts)
    watch(limits or Limits(), nproc_per_node, hosts, sm.current_host if sm else "algo-1")
    if train_here is not None and trains_in_pid_1(nproc_per_node, hosts):
        print("launching: one process on one host: training in this process (PID 1), no torchrun", flush=True)
        sys.exit(train_here())
    argv = torchrun_argv(os.environ, nproc_per_node, script)
    print("launching: " + " ".join(argv), flush=True)
    # Pipe mode: SageMaker's one FIFO per pass, copied to each of this host's processes (pipe_relay.py)
    with relayed(sm.channels.get(DATA_CHANNEL) if sm else None, nproc_per_node):
        outcome = run_torchrun(argv[3:], nproc_per_node)
    sys.exit(outcome)


def watch(limits: Limits, workers: int, hosts: int, host: str) -> Watchdog | None:
    """The watchdog over this host's workers, when a limit is in force; they learn its folder from
    the environment (HEARTBEAT_ENV), which they inherit (in PID 1 itself: read at train.main)."""
    if not limits.on:
        return None
    folder = Path(tempfile.mkdtemp(prefix="heartbeats-"))
    os.environ[HEARTBEAT_ENV] = str(folder)
    minutes = f"{limits.stall / 60:g} min without progress, {limits.startup / 60:g} min of start-up"
    print(f"watchdog: {minutes} (0: off) on {host}", flush=True)
    return Watchdog(folder, limits, host, workers, hosts).start()


def run_torchrun(args: Sequence[str], workers: int) -> int:
    """torchrun's main with `args`; 0 also after a SIGTERM that every worker answered with a checkpoint."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    with tempfile.TemporaryDirectory(prefix="clean-stops-") as marks:
        os.environ[CLEAN_STOP_ENV] = marks  # the workers inherit it
        try:
            torchrun(list(args))
        except SignalException as stop:
            clean = len(os.listdir(marks))
            if stop.sigval == signal.SIGTERM and clean == workers:
                print(f"stopped by SIGTERM: all {workers} worker(s) saved a checkpoint; exiting 0", flush=True)
                return 0
            print(f"stopped by {stop.sigval.name}: {clean} of {workers} worker(s) saved a checkpoint", flush=True)
            return 128 + int(stop.sigval)
    return 0
