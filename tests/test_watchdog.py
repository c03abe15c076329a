"""The watchdog (project/training/watchdog.py, stalls.py): a run whose ranks stop making progress fails with its
cause, and a slow one that moves is never stopped.

The detector's logic runs on a fake clock; the stacks it reads are faulthandler's, as a rank dumps them.
Two runs hang for real: a data loader worker under `invoke local` (one host), and rank 1 of a two-instance
job that `invoke train` runs on the sandbox, which fails with rank 1 named while rank 0's checkpoint stays.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pytest

from project.core import config as C
from project.core.config.messages import ConfigError
from project.core.errors import STALLED_EXIT
from project.training import stalls as W
from tests import stalls

LIMITS = W.Limits(stall=60.0, startup=300.0)


def beat(rank=0, phase=W.TRAINING, step=0, progress=0) -> W.Beat:
    return W.Beat(rank, "algo-1", 1000 + rank, phase, step, progress)


def test_a_slow_run_that_moves_is_never_stalled():
    detector = W.Detector(LIMITS, started=0.0, workers=2)
    for t in range(0, 3600, 50):  # a step every 50 s, the limit 60 s: for an hour
        beats = {r: beat(r, step=t // 50, progress=t) for r in (0, 1)}
        detector.observe(beats, float(t))
        assert detector.stalled(beats, float(t) + 49) == []
    # a long validation moves by batches, not steps
    for t in range(3600, 4000, 30):
        beats = {r: beat(r, W.VALIDATION, step=72, progress=t) for r in (0, 1)}
        detector.observe(beats, float(t))
        assert detector.stalled(beats, float(t) + 29) == []


def test_a_rank_without_progress_for_its_phases_limit_is_stalled():
    detector = W.Detector(LIMITS, started=0.0, workers=2)
    beats = {0: beat(0, step=5, progress=11), 1: beat(1, step=5, progress=10)}
    detector.observe(beats, 100.0)
    assert detector.stalled(beats, 160.0) == []  # at the limit: not yet
    moving = {0: beat(0, step=5, progress=12), 1: beats[1]}  # rank 0 moves, rank 1 is behind
    detector.observe(moving, 150.0)
    assert [s.rank for s in detector.stalled(moving, 161.0)] == [1]
    # start-up phases have the longer limit; a finished process is not watched
    detector = W.Detector(LIMITS, started=0.0, workers=2)
    starting = {0: beat(0, W.RENDEZVOUS), 1: beat(1, W.DONE)}
    detector.observe(starting, 0.0)
    assert detector.stalled(starting, 299.0) == []
    assert [s.rank for s in detector.stalled(starting, 301.0)] == [0]
    # a worker that never reported is stalled after the start-up limit, unnamed
    silent = W.Detector(LIMITS, started=0.0, workers=1)
    assert silent.stalled({}, 299.0) == [] and silent.stalled({}, 301.0)[0].rank is None


def test_limits_off_locally_unless_set_and_the_jobs_default_in_a_container(composed):
    trainer = composed().trainer
    assert not W.Limits.of(trainer, in_container=False).on
    assert W.Limits.of(trainer, in_container=True) == W.Limits(
        60 * trainer.job_stall_timeout_minutes, 60 * trainer.job_startup_timeout_minutes
    )
    assert W.Limits.of(composed("trainer.stall_timeout_minutes=0.1").trainer, in_container=False).stall == 6.0
    assert not W.Limits.of(composed("trainer.stall_timeout_minutes=0").trainer, in_container=True).stall
    with pytest.raises(ConfigError, match=r"^trainer.stall_timeout_minutes must be >= 0, got -1"):
        C.compose(["trainer.stall_timeout_minutes=-1"])


COLLECTIVE = """Thread 0x00007f1 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 331 in wait
  File "/site-packages/torch/utils/data/_utils/pin_memory.py", line 20 in _pin_memory_loop

Current thread 0x00007f0 (most recent call first):
  File "/site-packages/torch/distributed/distributed_c10d.py", line 2501 in all_reduce
  File "/site-packages/torch/distributed/c10d_logger.py", line 83 in wrapper
  File "/home/me/model.py", line 40 in training_step
  File "/site-packages/pytorch_lightning/loops/fit_loop.py", line 200 in run
"""
OWN = """Current thread 0x00007f0 (most recent call first):
  File "/home/me/model.py", line 12 in training_step
  File "/site-packages/pytorch_lightning/core/module.py", line 20 in _call
"""
BACKWARD = """Current thread 0x00007f0 (most recent call first):
  File "/site-packages/torch/autograd/graph.py", line 825 in _engine_run_backward
  File "/site-packages/torch/autograd/__init__.py", line 347 in backward
"""
LOADER = """Current thread 0x00007f0 (most recent call first):
  File "/usr/lib/python3.11/multiprocessing/connection.py", line 440 in _poll
  File "/usr/lib/python3.11/multiprocessing/queues.py", line 113 in get
  File "/site-packages/torch/utils/data/dataloader.py", line 1133 in _try_get_data
  File "/home/me/train.py", line 3 in main
"""


def test_where_a_rank_waits_is_read_from_its_stacks():
    said = {name: W.waits_in(W.main_thread_frames(dump)) for name, dump in [
        ("collective", COLLECTIVE), ("own", OWN), ("backward", BACKWARD), ("loader", LOADER)
    ]}  # fmt: skip
    assert said["collective"] == W.Waiting("all_reduce", collective=True)  # the main thread's, not the pin thread's
    assert said["own"] == W.Waiting("training_step (model.py:12)", collective=False)
    assert said["backward"].collective and "all_reduce" in said["backward"].what
    assert said["loader"] == W.Waiting("a data loader worker (trainer.num_workers)", collective=False)
    # the stuck rank is the one not waiting in a collective, whatever the order
    stalled = [W.Stalled(0, beat(0, step=5), 900.0), W.Stalled(1, beat(1, step=5), 901.0)]
    line, stuck = W.verdict(stalled, {0: said["backward"], 1: said["own"]}, "algo-1", [0, 1])
    assert stuck.rank == 1
    assert line == (
        "rank 1 on algo-1 stuck in training_step (model.py:12) in training step at step 5 for 15.0 min; "
        "rank 0 waits for it"
    )
    line, _ = W.verdict(stalled[:1], {0: said["collective"]}, "algo-1", [0])
    assert line.startswith("rank 0 on algo-1 waits in all_reduce in training step at step 5") and "another host" in line


def test_a_hung_data_worker_ends_invoke_local_with_its_cause(tmp_path):
    """One host, one rank: the loader's worker stops at the third batch; `invoke local` ends within
    the limit and a few seconds, naming the rank, the worker and the fix-pointing phase."""
    from tests.cli import invoke

    root = tmp_path / "user"
    package = stalls.write_package(root)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    overrides = stalls.byo.overrides(
        root,
        tmp_path / "runs",
        **{"dataset._target_": f"{package}.stalls.HangingWorkerData", "trainer.stall_timeout_minutes": 0.05},
    )
    started = time.monotonic()
    result = invoke("local", *overrides, env=env, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == STALLED_EXIT, result.stdout[-2000:] + result.stderr[-3000:]
    line = next(x for x in result.stderr.splitlines() if x.startswith(W.LINE_PREFIX))
    assert re.fullmatch(
        r"stalled: rank 0 on \S+ stuck in a data loader worker \(trainer.num_workers\) "
        r"in training step at step 2 for 0.\d min",
        line,
    ), line
    assert "_try_get_data" in result.stderr  # the rank's stacks, printed
    assert seconds < 60, seconds


PID_1 = """
import faulthandler, os, sys, time
from pathlib import Path
from project.training import stalls as W
from project.training.watchdog import Watchdog

folder = Path(sys.argv[1])
Watchdog(folder, W.Limits(stall=1.0), "algo-1", workers=1).start()
faulthandler.register(W.STACKS_SIGNAL, file=open(W.stacks_file(folder, 0), "a"), all_threads=True)
W.heartbeat_file(folder, 0).write_text(W.Beat(0, "algo-1", os.getpid(), W.TRAINING, 3, 7).to_json())


def training_step():
    time.sleep(60)


training_step()
"""


def test_one_process_watched_by_itself_ends_the_container(tmp_path):
    """One process on one host trains in the launcher, PID 1 (project/training/launch.py): the watchdog is
    a thread of the very process it watches, and ends it with the failure file written."""
    import subprocess

    (tmp_path / "pid1.py").write_text(PID_1)
    (tmp_path / "output").mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "SM_MODEL_DIR": str(tmp_path / "model"),
        "SM_OUTPUT_DIR": str(tmp_path / "output"),
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "pid1.py"), str(tmp_path / "beats")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == STALLED_EXIT, done.stderr
    assert re.fullmatch(
        r"stalled: rank 0 on algo-1 stuck in training_step \(pid1.py:\d+\) in training step at step 3 for 0.0 min",
        (tmp_path / "output" / "failure").read_text(),
    )


@pytest.mark.slow
def test_a_rank_stuck_on_one_host_fails_the_two_instance_job_naming_it(aws_infra, infra_overrides, tmp_path):
    """`invoke train` with instance.count=2 on the sandbox: two instances, one container each, under the
    SDK's driver and the launcher (sm_entry.py --launch, torchrun as PID 1), rendezvous on algo-1 by
    name. Rank 1 (algo-2) stops in its training step at step 5, rank 0 (algo-1) waits for it in the
    step's gradient all_reduce. The job fails within the limit and 30 s; its FailureReason, algo-2's
    failure file as SageMaker takes it, names rank 1 and its frame; rank 0's checkpoint of step 4 is in
    the job's checkpoint S3 URI for a restart."""
    import uuid

    from project.aws.session import aws_clients
    from project.aws.triage import JobFacts, classify
    from project.core.identity import run_identity
    from project.sandbox import service as emulator
    from project.sandbox.ecr_iam import placeholder_manifest
    from tests.cli import invoke
    from tests.requires import skip_unless

    skip_unless(container=True)
    clients = aws_clients(aws_infra.region, os.environ["AWS_ENDPOINT_URL"])
    name, tag = f"stall-{uuid.uuid4().hex[:6]}", f"stall{uuid.uuid4().hex[:7]}"
    repository = aws_infra.repository_url.split("/", 1)[1]
    clients.ecr.put_image(repositoryName=repository, imageTag=tag, imageManifest=placeholder_manifest(tag))
    root = tmp_path / "user"
    package = stalls.write_package(root)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    limit_minutes = 0.1
    overrides = stalls.byo.overrides(root, tmp_path / "runs") + [
        f"model._target_={package}.stalls.HangsOnRank1",
        f"dataset.s3_prefix=datasets/{name}",
        "trainer.checkpoint_every_n_steps=2",
        f"trainer.stall_timeout_minutes={limit_minutes}",
        "instance=ml.m5.xlarge",  # no GPU: one process per host
        "instance.count=2",
        f"job.base_name={name}",
        "job.image=custom",
        f"job.image_tag={tag}",
        *infra_overrides,
    ]
    up = invoke("upload", *overrides, env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs") as service:
        train = invoke("train", *overrides, "--yes", "--poll", "1", env=env, timeout=300)
        job = re.search(r"launched (\S+)", train.stdout + train.stderr)
        assert job, train.stdout[-4000:] + train.stderr[-3000:]
        run = service.result(job.group(1), timeout=240)
    assert train.returncode != 0, train.stdout[-3000:]
    desc = clients.sagemaker.describe_training_job(TrainingJobName=run.job_name)
    assert desc["ResourceConfig"]["InstanceCount"] == 2 and sorted(run.trees) == ["algo-1", "algo-2"]
    # algo-2 fails first: its rank is the stuck one. algo-1's rank waits in a collective; it fails too
    # (its peer is gone) or is stopped: the job's FailureReason is algo-2's.
    assert run.status == desc["TrainingJobStatus"] == "Failed", run.stdout[-4000:]
    reason = desc["FailureReason"]
    assert re.fullmatch(
        r"AlgorithmError: stalled: rank 1 on algo-2 stuck in training_step \(stalls.py:\d+\) "
        r"in training step at step 5 for 0.1 min, exit code: 124",
        reason,
    ), reason
    assert re.search(
        r'\[algo-2\] watchdog: rank 1 stacks:\n.*File ".*stalls.py", line \d+ in training_step', run.stdout, re.S
    )
    # `invoke why` on what the job left: its FailureReason and each host's log stream
    hosts_logs = {}
    for stream in run.log_streams.values():
        events = clients.logs.get_log_events(logGroupName=emulator.LOG_GROUP, logStreamName=stream, startFromHead=True)
        hosts_logs[stream] = [e["message"] for e in events["events"]][-200:]
    triage = classify(JobFacts(run.job_name, "Failed", reason, hosts=hosts_logs))
    assert triage.kind == "stalled" and triage.cause.startswith("rank 1 on algo-2 made no progress"), triage.report()
    checkpoint = f"{run_identity(C.compose(overrides))}-step=00000004.ckpt"
    bucket, prefix = desc["CheckpointConfig"]["S3Uri"].removeprefix("s3://").split("/", 1)
    listed = clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix.rstrip("/") + "/").get("Contents", [])
    assert checkpoint in {o["Key"].rsplit("/", 1)[-1] for o in listed}  # rank 0's, for the restart
    saved = (run.trees["algo-1"] / "checkpoints" / checkpoint).stat().st_mtime
    assert desc["TrainingEndTime"].timestamp() - saved < 60 * limit_minutes + 30


def test_a_ranks_heartbeat_is_written_only_when_it_changed(tmp_path):
    from project.training.heartbeat import Heartbeat

    beats = Heartbeat(tmp_path, rank=0, host="algo-1")
    beats.beat(W.TRAINING, step=3)
    beats.write()
    first = W.heartbeat_file(tmp_path, 0).stat().st_mtime_ns
    beats.write()  # nothing new: the file stays as it was
    assert W.heartbeat_file(tmp_path, 0).stat().st_mtime_ns == first
    assert W.read_beats(tmp_path) == {0: W.Beat(0, "algo-1", os.getpid(), W.TRAINING, 3, 1)}
    beats.set_rank(2)  # Lightning's global rank, known later
    beats.finish()
    assert W.read_beats(tmp_path) == {2: W.Beat(2, "algo-1", os.getpid(), W.DONE, 3, 2)}
