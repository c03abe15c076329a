"""`invoke why`'s classifier (project/aws/triage.py) over the text real failures leave.

The failures we can cause here are caused for real (tests/failing_runs.py: a job's container
run, our launcher's torchrun and all): a corrupt data file, a model whose module raises
ImportError, a two-host job whose second host never starts, a model too big for a memory-limited
cgroup (the kernel's OOM killer sends SIGKILL). A stop on SIGTERM is the sandbox's
(tests/test_sagemaker_e2e.py). What needs a GPU, several GPU hosts or AWS's capacity is recorded
text, each with where it was seen.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

from project.aws.triage import LOG_TAIL_LINES, RULES, JobFacts, Triage, classify, host_of, log_link, region_of
from project.core.process import failure_text
from tests.failing_runs import FailedRun, container_run, memory_limit, resolved
from tests.requires import requires
from tests.synthetic import tiny_overrides, write_dataset

pytestmark = pytest.mark.xdist_group("triage-failures")  # one worker: the module's runs are made once

JOB = "mnist-20261203-061500-123-abcd"
ARN = f"arn:aws:sagemaker:eu-west-1:123456789012:training-job/{JOB}"
STREAM1, STREAM2 = f"{JOB}/algo-1-1764742500", f"{JOB}/algo-2-1764742501"
OOM_LIMIT_BYTES = 1536 * 2**20  # the worker imports torch and Lightning (~0.5 GB), then builds 1.1 GB of MLP
OOM_HIDDEN = 16384  # hidden x hidden float32 weights: 1.07 GB


def facts(status="Failed", reason="", hosts=None, history=(), **extra) -> JobFacts:
    return JobFacts(
        name=JOB,
        status=status,
        failure_reason=reason,
        status_history=tuple(history),
        region="eu-west-1",
        instance="ml.g5.12xlarge",
        checkpoints=f"s3://artifacts/checkpoints/{JOB}",
        hosts=hosts or {},
        **extra,
    )


# --- real failures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_failures(tmp_path_factory) -> dict[str, FailedRun]:
    """The failing container runs, side by side (each is seconds of torch start-up)."""
    root = tmp_path_factory.mktemp("failures")
    files = write_dataset(root / "raw", n_train=300, n_test=100)
    overrides = tiny_overrides(root / "raw", files, root / "runs")
    generic = [o for o in overrides if not o.startswith("model.net.width")]  # the CNN's own knob
    corrupt = root / "corrupt"
    shutil.copytree(root / "raw", corrupt)
    (corrupt / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the labels")  # as a bad upload leaves it
    user = root / "user"
    user.mkdir()
    (user / "mynet.py").write_text("import not_installed_dep  # the package is missing in the job\n")

    configs = {
        "data": resolved(overrides),
        "import": resolved([*generic, "model.net._target_=mynet.Net"]),
        "oom": resolved([*generic, "model=mlp", f"model.net.hidden={OOM_HIDDEN}"]),
    }

    def oom() -> FailedRun | None:
        with memory_limit(OOM_LIMIT_BYTES) as cgroup:
            return None if cgroup is None else container_run(root / "oom", configs["oom"], root / "raw", cgroup=cgroup)

    with ThreadPoolExecutor(4) as pool:
        runs = {
            "data": pool.submit(container_run, root / "data", configs["data"], corrupt),
            "import": pool.submit(
                container_run, root / "import", configs["import"], root / "raw", {"PYTHONPATH": str(user)}
            ),
            "oom": pool.submit(oom),
            # Host algo-2 of a two-host job never started: algo-1's rendezvous gives up (after 5 s here;
            # torchrun's default is 15 min).
            "missing-rank": pool.submit(
                container_run,
                root / "rank",
                configs["data"],
                root / "raw",
                hosts=("algo-1", "algo-2"),
                torchrun_options=("--rdzv-conf=timeout=5",),
            ),
        }
        return {name: run.result() for name, run in runs.items()}


def real(run: FailedRun) -> Triage:
    return classify(facts(reason=run.failure_reason, hosts={STREAM1: run.lines[-LOG_TAIL_LINES:]}))


@pytest.mark.slow
def test_a_corrupt_data_file_is_a_data_error(real_failures):
    run = real_failures["data"]
    assert run.returncode == 1 and run.failure_reason.startswith("AlgorithmError: DataError: "), run.lines[-20:]
    triage = real(run)
    assert triage.kind == "data", triage.report()
    assert "t10k-labels-idx1-ubyte.gz: SHA256 check failed" in triage.cause
    assert not triage.cause.endswith("exit code: 1")  # SageMaker's suffix is not part of the cause
    assert "invoke upload" in triage.fix
    assert triage.reason.startswith("AlgorithmError: DataError:")


@pytest.mark.slow
def test_a_model_module_that_fails_to_import_is_an_import_error(real_failures):
    run = real_failures["import"]
    assert run.returncode == 1, run.lines[-20:]
    # The worker's one line, as the log has it: the network's _target_ is checked before it is built.
    assert any(
        line.startswith(
            "error: model.net._target_=mynet.Net: cannot import module mynet (ModuleNotFoundError: No "
            "module named 'not_installed_dep')"
        )
        for line in run.lines
    ), run.lines[-20:]
    triage = real(run)
    assert triage.kind == "import", triage.report()
    assert "no module named 'not_installed_dep'" in triage.cause
    assert "requirements-train.txt" in triage.fix
    # FailureReason names the root cause too (project.core.process.failure_text), not only Hydra's wrapper.
    only_reason = classify(facts(reason=run.failure_reason))
    assert only_reason.kind == "import" and "not_installed_dep" in only_reason.cause


@pytest.mark.slow
@requires(memory_cgroup=True)
def test_a_worker_killed_by_the_kernel_for_memory_is_a_host_oom(real_failures):
    run = real_failures["oom"]
    assert run is not None, "a memory cgroup could be made, but not for the run"
    # torchrun saw its worker die of SIGKILL (the cgroup's OOM killer) and failed the job.
    assert run.returncode == 1 and any("Signal 9 (SIGKILL)" in line for line in run.lines), run.lines[-30:]
    assert run.failure_reason == "AlgorithmError: exit code: 1"  # the worker had no chance to say why
    triage = real(run)
    assert triage.kind == "host-oom-kill", triage.report()
    assert "ml.g5.12xlarge ran out of host memory" in triage.cause
    assert "instance" in triage.fix and "trainer.batch_size" in triage.fix and "trainer.num_workers" in triage.fix
    assert triage.link == log_link("eu-west-1", STREAM1)


@pytest.mark.slow
def test_a_host_that_never_joins_is_a_missing_rank(real_failures):
    run = real_failures["missing-rank"]
    assert run.returncode == 1 and any("1/2 clients joined" in line for line in run.lines), run.lines[-20:]
    triage = real(run)
    assert triage.kind == "missing-rank", triage.report()
    assert triage.cause.startswith("a rank never joined the process group on algo-1")
    assert "torch.distributed.DistStoreError: Timed out after" in triage.evidence


# --- recorded text of what needs a GPU, several hosts or AWS -------------------------------------

# PyTorch >= 2.2's message; from https://github.com/pytorch/pytorch/issues/16417 (comment of 2024-03-13),
# the rank prefix as torchrun's --tee prints it.
CUDA_OOM = (
    "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 22.00 MiB. GPU 1 has a total "
    "capacity of 23.65 GiB of which 11.06 MiB is free. Including non-PyTorch memory, this process has 23.60 GiB "
    "memory in use. Of the allocated memory 22.90 GiB is allocated by PyTorch, and 194.87 MiB is reserved by "
    "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)
# From https://github.com/XPixelGroup/BasicSR/issues/737 (torch 2.x, DDP over NCCL).
NCCL_TIMEOUT = [
    "[rank0]:[E626 06:24:44.159932949 ProcessGroupNCCL.cpp:616] [Rank 0] Watchdog caught collective operation "
    "timeout: WorkNCCL(SeqNum=808, OpType=ALLREDUCE, NumelIn=9801523, NumelOut=9801523, Timeout(ms)=600000) "
    "ran for 600030 milliseconds before timing out.",
    "[rank0]:[E626 06:24:44.160366013 ProcessGroupNCCL.cpp:1785] [PG ID 0 PG GUID 0(default_pg) Rank 0] Exception "
    "(either an error or timeout) detected by watchdog at work: 808, last enqueued NCCL work: 811, last completed "
    "NCCL work: 807.",
]
# torch 2.x c10d when a peer never reaches init_process_group (the shape torch's TCPStore prints).
MISSING_RANK = (
    "torch.distributed.DistNetworkError: The client socket has timed out after 900000ms while trying to "
    "connect to (algo-1, 29500)."
)
# FailureReason of a job SageMaker could not start; https://github.com/DIAGNijmegen/rse-grand-challenge/issues/2631
CAPACITY = (
    "CapacityError: Unable to provision requested ML compute capacity. Please retry using a different ML instance type."
)
# The quota refusal's text; https://github.com/gabehollombe-aws/jupyter-notebooks/issues/1
QUOTA = (
    "ResourceLimitExceeded: The account-level service limit 'ml.p3.2xlarge for training job usage' is 0 Instances, "
    "with current utilization of 0 Instances and a request delta of 1 Instances."
)
# SecondaryStatus values of a reclaimed spot job (DescribeTrainingJob API reference: Interrupted,
# MaxWaitTimeExceeded); the status message is ours.
SPOT_HISTORY = ("MaxWaitTimeExceeded", "Training: Training in progress.", "Interrupted: Spot instance interrupted.")


def test_cuda_oom_on_one_host_wins_over_the_nccl_timeout_it_causes_on_the_other():
    hosts = {STREAM1: ["epoch 1/3 step 10/200", *NCCL_TIMEOUT], STREAM2: ["epoch 1/3 step 10/200", CUDA_OOM]}
    triage = classify(facts(reason="AlgorithmError: exit code: 1", hosts=hosts))
    assert triage.kind == "cuda-oom", triage.report()
    assert triage.cause == "a GPU ran out of memory on algo-2"
    assert "trainer.batch_size" in triage.fix and "trainer.precision=16-mixed" in triage.fix
    assert triage.evidence.startswith("algo-2: [rank1]: torch.OutOfMemoryError: CUDA out of memory.")
    assert triage.link == log_link("eu-west-1", STREAM2)  # the host where it happened


def test_nccl_timeout_and_missing_rank():
    timeout = classify(facts(reason="AlgorithmError: exit code: 1", hosts={STREAM1: NCCL_TIMEOUT}))
    assert timeout.kind == "nccl-timeout" and "on algo-1" in timeout.cause, timeout.report()
    assert "NCCL_DEBUG=INFO" in timeout.fix
    missing = classify(facts(hosts={STREAM2: ["launching: ...", MISSING_RANK]}))
    assert missing.kind == "missing-rank" and "algo-2" in missing.cause, missing.report()


def test_platform_failures_capacity_quota_spot():
    capacity = classify(facts(reason=CAPACITY))
    assert capacity.kind == "capacity" and "no ml.g5.12xlarge capacity in eu-west-1" in capacity.cause
    assert "instance=" in capacity.fix
    assert capacity.link == log_link("eu-west-1", job=JOB)  # no stream: the job's streams, filtered
    quota = classify(facts(reason=QUOTA))
    assert quota.kind == "quota" and "'ml.p3.2xlarge for training job usage'" in quota.cause, quota.report()
    assert "Service Quotas" in quota.fix and "'ml.p3.2xlarge for training job usage'" in quota.fix
    spot = classify(facts(status="Stopped", history=SPOT_HISTORY, hosts={STREAM1: ["sigterm_checkpoint_step=40"]}))
    assert spot.kind == "spot-interruption", spot.report()
    assert "resumes from the newest checkpoint" in spot.fix and "job.max_wait_minutes" in spot.fix
    assert spot.cause == "EC2 reclaimed the managed spot instance (Interrupted)"
    waited = classify(facts(status="Failed", history=("MaxWaitTimeExceeded",)))
    assert waited.kind == "spot-interruption" and "waited longer than job.max_wait_minutes" in waited.cause
    unnamed = classify(facts(reason="ResourceLimitExceeded: the account-level service limit was reached"))
    assert unnamed.kind == "quota" and "'ml.g5.12xlarge for training job usage'" in unnamed.fix


def test_stopped_says_whether_a_checkpoint_was_saved_and_how_to_resume():
    saved = classify(
        facts(status="Stopped", history=("Stopped",), hosts={STREAM1: ["x", "sigterm_checkpoint_step=42", "y"]})
    )
    assert saved.kind == "stopped", saved.report()
    assert saved.cause == (
        f"stopped by StopTrainingJob; the training saved a checkpoint at step 42 (s3://artifacts/checkpoints/{JOB})"
    )
    assert "resumes from step 42" in saved.fix
    unsaved = classify(facts(status="Stopped", history=("Stopped",), hosts={STREAM1: ["starting"]}))
    assert unsaved.kind == "stopped" and "before the training saved a checkpoint" in unsaved.cause
    runtime = classify(facts(status="Stopped", history=("MaxRuntimeExceeded",)))
    assert runtime.kind == "max-runtime" and "job.max_run_minutes" in runtime.fix


def test_completed_running_and_unknown():
    assert classify(facts(status="Completed")).cause == "the job completed"
    running = classify(facts(status="InProgress", history=("Training",)))
    assert running.kind == "running" and "InProgress / Training" in running.cause
    lines = [f"line {i}" for i in range(40)] + ["Segmentation fault (core dumped)"]
    unknown = classify(facts(reason="AlgorithmError: exit code: 139", hosts={STREAM1: lines}))
    assert unknown.kind == "unknown" and unknown.last_lines[-1] == "Segmentation fault (core dumped)"
    report = unknown.report().splitlines()
    assert report[0] == f"job {JOB} Failed: AlgorithmError: exit code: 139"
    assert report[1].startswith("cause: ") and report[2].startswith("fix: ") and report[3].startswith("log: ")
    assert report[-1] == "  | Segmentation fault (core dumped)" and len(report) == 5 + 15


def test_rules_are_in_their_deliberate_order():
    """Platform facts first, then the root causes that make the other hosts fail, SIGKILL last."""
    kinds = list(dict.fromkeys(rule.kind for rule in RULES))
    assert kinds == [
        "spot-interruption", "max-runtime", "stopped", "capacity", "quota",
        "cuda-oom", "data", "import", "stalled", "nccl-timeout", "missing-rank", "host-oom-kill",
    ]  # fmt: skip


def test_console_log_link_format():
    assert log_link("eu-west-1", STREAM1) == (
        "https://eu-west-1.console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:log-groups/log-group/"
        f"$252Faws$252Fsagemaker$252FTrainingJobs/log-events/{JOB}$252Falgo-1-1764742500"
    )
    assert log_link("us-east-1", job=JOB).endswith(
        f"log-group/$252Faws$252Fsagemaker$252FTrainingJobs$3FlogStreamNameFilter$3D{JOB}"
    )  # as the SageMaker SDK v3 builds it (sagemaker/train/common_utils/job_wait.py)
    assert region_of(ARN) == "eu-west-1" and host_of(STREAM2) == "algo-2"


def test_job_facts_from_a_description():
    desc = {
        "TrainingJobName": JOB,
        "TrainingJobArn": ARN,
        "TrainingJobStatus": "Failed",
        "SecondaryStatus": "Failed",
        "FailureReason": "AlgorithmError: DataError: x\nmore",
        "SecondaryStatusTransitions": [{"Status": "Interrupted", "StatusMessage": "spot reclaimed"}],
        "ResourceConfig": {"InstanceType": "ml.p3.8xlarge", "InstanceCount": 2},
    }
    got = JobFacts.of(desc, {STREAM1: ["a"]})
    assert (got.region, got.instance, got.status_history) == (
        "eu-west-1",
        "ml.p3.8xlarge",
        ("Failed", "Interrupted: spot reclaimed"),
    )
    assert classify(got).reason == "AlgorithmError: DataError: x"  # the first line


def test_failure_text_names_the_type_and_the_root_cause():
    try:
        try:
            raise ModuleNotFoundError("No module named 'x'")
        except ImportError as exc:
            raise RuntimeError("Error locating target 'a.B'\nsee below") from exc
    except RuntimeError as outer:
        text = failure_text(outer)
    assert (
        text
        == "RuntimeError: Error locating target 'a.B' see below (caused by ModuleNotFoundError: No module named 'x')"
    )


def test_the_watchdogs_stalled_line_names_the_stuck_rank_and_the_fix():
    """The watchdog's line (project/training/watchdog.py) wins over the SIGKILLs it sends, which would
    read as killed for memory, and over a waiting host's NCCL timeout."""
    stuck = (
        "stalled: rank 1 on algo-2 stuck in all_reduce (model.py:40) in training step at step 5 for 15.0 min; "
        "rank 0 waits for it"
    )
    hosts = {STREAM1: [*NCCL_TIMEOUT, "exitcode  : -9 (pid: 412)"], STREAM2: [stuck]}
    triage = classify(facts(reason=f"AlgorithmError: {stuck}, exit code: 124", hosts=hosts))
    assert triage.kind == "stalled", triage.report()
    assert triage.cause == (
        "rank 1 on algo-2 made no progress for 15.0 min in training step at step 5, stuck in all_reduce "
        "(model.py:40); rank 0 waits for it"
    )
    assert "NCCL_DEBUG=INFO" in triage.fix and "trainer.num_workers=0" in triage.fix
    loader = (
        "stalled: rank 0 on algo-1 stuck in a data loader worker (trainer.num_workers) in validation at step 9 "
        "for 15.0 min"
    )
    triage = classify(facts(reason=f"AlgorithmError: {loader}, exit code: 124"))
    assert triage.kind == "stalled" and "trainer.num_workers=0" in triage.fix.split(";")[0], triage.report()
    waits = (
        "stalled: rank 0 on algo-1 waits in all_reduce in training step at step 5 for 15.0 min: a rank on another host"
    )
    triage = classify(facts(reason=f"AlgorithmError: {waits}, exit code: 124"))
    assert triage.cause == "rank 0 on algo-1 waited 15.0 min in all_reduce at step 5 for a rank on another host"
    assert "other hosts' logs" in triage.fix
