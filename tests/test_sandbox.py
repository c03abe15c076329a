"""`invoke sandbox` as a user runs it: the real CLI in a subprocess, real boto3 calls against it.

Each moto quirk a user of the sandbox would hit is checked through the API call that shows it:
ListTrainingJobs' SortOrder ("the latest job"), jobs Completed at once, Environment and
MetricDefinitions dropped, StopTrainingJob answering 500, and the buckets' TLS-only Deny
refusing every object call. The module's sandbox only records jobs (--no-jobs), so a job stays
InProgress until stopped; running jobs is covered by tests/test_emulator.py, the e2e module and
the README recipe (test_readme_offline.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import pytest

from project.aws.monitor import latest_job
from tests.requires import requires

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/project:test"
METRICS = [{"Name": "test_acc", "Regex": r"test_acc=([0-9.]+)"}]
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def aws_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
    )
    return env


def invoke(*args: str, env: dict[str, str], timeout: float = 180, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "invoke", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_sandbox(tmp: Path) -> dict:
    """`invoke sandbox --port P --no-jobs` in the foreground, serving: its url, port, banner, env and process."""
    port, env = free_port(), aws_env(tmp)
    process = subprocess.Popen(
        [sys.executable, "-m", "invoke", "sandbox", "--port", str(port), "--no-jobs"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    banner = process.stdout.readline().strip()
    assert banner.startswith("sandbox: AWS at"), (banner, process.stderr.read() if process.poll() is not None else "")
    return {"url": f"http://127.0.0.1:{port}", "port": port, "banner": banner, "env": env, "process": process}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The module's sandbox (start_sandbox); Ctrl-C at the end. No test stops it: the others share it."""
    started = start_sandbox(tmp_path_factory.mktemp("sandbox"))
    yield started
    stopped_by_ctrl_c(started["process"])


def stopped_by_ctrl_c(process: subprocess.Popen) -> tuple[str, str]:
    """Ctrl-C, and its outputs once it has stopped; a sandbox that does not stop within a minute is
    killed (nothing left running) and the test fails."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise


@pytest.fixture(scope="module")
def aws(sandbox):
    session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
    services = ("sagemaker", "s3", "ecr", "iam", "service-quotas")
    return {name: session.client(name, endpoint_url=sandbox["url"]) for name in services}


def create_job(aws, prefix: str, **request) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    aws["sagemaker"].create_training_job(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": IMAGE,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": ["true"],
            "MetricDefinitions": METRICS,
        },
        RoleArn="arn:aws:iam::123456789012:role/sandbox-test",
        OutputDataConfig={"S3OutputPath": "s3://nowhere/jobs"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
        **request,
    )
    return name


def test_banner_says_where_and_how_to_point_at_it(sandbox):
    url, banner = sandbox["url"], sandbox["banner"]
    assert "\n" not in banner and f"export AWS_ENDPOINT_URL={url}" in banner and f"aws.endpoint_url={url}" in banner
    assert "Ctrl-C stops it" in banner and "only recorded, not run: --no-jobs was given" in banner


def test_a_busy_port_is_one_line(sandbox):
    result = invoke("sandbox", "--port", str(sandbox["port"]), env=sandbox["env"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"error: port {sandbox['port']} on 127.0.0.1 is already in use (another sandbox, LocalStack or moto?): "
        "stop it, or pick another port with --port"
    )


def test_latest_job_is_the_newest_one(aws):
    """moto ignores SortOrder: ListTrainingJobs' first job was the oldest, and `invoke fetch` took it."""
    prefix = f"latest-{uuid.uuid4().hex[:4]}"
    names = [create_job(aws, prefix) for _ in range(3)]
    listed = aws["sagemaker"].list_training_jobs(NameContains=prefix, SortBy="CreationTime", SortOrder="Descending")
    assert [j["TrainingJobName"] for j in listed["TrainingJobSummaries"]] == names[::-1]
    assert latest_job(aws["sagemaker"], prefix) == names[-1]  # what `invoke status` / `invoke fetch` use


def test_a_created_job_is_in_progress_and_keeps_its_request(aws):
    """moto marks a job Completed at once and drops Environment and the MetricDefinitions it was given."""
    name = create_job(aws, "kept", Environment={"RUN_MARK": "kept"})
    desc = aws["sagemaker"].describe_training_job(TrainingJobName=name)
    assert (desc["TrainingJobStatus"], desc["SecondaryStatus"]) == ("InProgress", "Starting")
    assert "ModelArtifacts" not in desc
    assert desc["Environment"] == {"RUN_MARK": "kept"}
    assert desc["AlgorithmSpecification"]["MetricDefinitions"] == METRICS


def test_stop_training_job_stops_it(aws):
    """moto answers StopTrainingJob with a 500."""
    sm = aws["sagemaker"]
    name = create_job(aws, "stop")
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
    with pytest.raises(sm.exceptions.ClientError, match="in status Stopped"):
        sm.stop_training_job(TrainingJobName=name)


def tls_only_policy(bucket: str, denied_key: str) -> str:
    """terraform/s3.tf's TLS-only Deny, plus an unconditional Deny that must still refuse."""
    statements = [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyOneKey",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": f"arn:aws:s3:::{bucket}/{denied_key}",
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def test_bucket_policy_conditions_are_evaluated_as_s3_does(aws):
    """moto ignores Conditions: the TLS-only Deny refused every object call (a 403 after `tflocal apply`)."""
    s3, bucket = aws["s3"], f"tls-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=tls_only_policy(bucket, "secret.txt"))
    s3.put_object(Bucket=bucket, Key="open.txt", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="open.txt")["Body"].read() == b"ok"
    s3.put_object(Bucket=bucket, Key="secret.txt", Body=b"no")
    with pytest.raises(s3.exceptions.ClientError, match=r"AccessDenied|\(403\)"):
        s3.get_object(Bucket=bucket, Key="secret.txt")


def test_every_image_tag_is_this_machine(aws):
    """No Docker here: a sandbox job runs in this Python environment, so `invoke train`'s tag check passes."""
    ecr, repository = aws["ecr"], f"repo-{uuid.uuid4().hex[:6]}"
    ecr.create_repository(repositoryName=repository, imageTagMutability="IMMUTABLE")
    found = ecr.describe_images(repositoryName=repository, imageIds=[{"imageTag": "abc1234"}])["imageDetails"]
    assert [d["imageTags"] for d in found] == [["abc1234"]]
    with pytest.raises(ecr.exceptions.RepositoryNotFoundException):
        ecr.describe_images(repositoryName="no-such-repo", imageIds=[{"imageTag": "abc1234"}])


def test_role_simulation_is_refused_not_a_server_error(aws):
    """moto has no SimulatePrincipalPolicy (a 500): the SageMaker SDK's role check crashed `invoke train`."""
    iam = aws["iam"]
    role = iam.create_role(RoleName=f"sim-{uuid.uuid4().hex[:6]}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    with pytest.raises(iam.exceptions.ClientError) as refused:
        iam.simulate_principal_policy(PolicySourceArn=role, ActionNames=["s3:ListBucket"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"  # the SDK's "verdict unknown"


def test_it_answers_sagemaker_quotas_generously(aws):
    """moto serves the VPC's quotas only: `invoke train`'s quota check would always warn against it."""
    from project.aws.quotas import free_instances
    from project.core.config import known_instance_types
    from project.sandbox.quotas import SANDBOX_DEFAULT

    assert free_instances(aws["service-quotas"], aws["sagemaker"], "ml.p5.48xlarge") == SANDBOX_DEFAULT
    names = [
        q["QuotaName"]
        for page in aws["service-quotas"].get_paginator("list_service_quotas").paginate(ServiceCode="sagemaker")
        for q in page["Quotas"]
    ]
    assert "ml.g6e.xlarge for spot training job usage" in names
    assert len(names) == len(set(names)) == 3 * len(known_instance_types())  # every page, each quota once


def test_ctrl_c_stops_it_cleanly(tmp_path):
    sandbox = start_sandbox(tmp_path)  # its own: the module's is shared, in any order
    process = sandbox["process"]
    out, err = stopped_by_ctrl_c(process)
    assert process.returncode == 0, err
    assert "Traceback" not in out + err and out.strip().endswith("sandbox: stopped")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sandbox["port"]), timeout=2)


def checkout_copy(dest: Path) -> Path:
    """The code and configs of this checkout in dest: a checkout of its own, with its own .sandbox/."""
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("project", "conf", "hydra_plugins"):
        shutil.copytree(ROOT / folder, dest / folder, ignore=ignore)
    shutil.copy2(ROOT / "tasks.py", dest / "tasks.py")
    return dest


def test_background_pid_file_and_stop(tmp_path):
    """In a copy of the checkout: the sandboxes other tests run from this one (and a SIGKILLed
    one's pid file) are none of its business, and a developer's own sandbox is never stopped."""
    env, port = aws_env(tmp_path), free_port()
    checkout = checkout_copy(tmp_path / "checkout")
    pid_file = checkout / ".sandbox" / "sandbox.pid"

    started = invoke("sandbox", "--background", "--port", str(port), "--no-jobs", env=env, cwd=checkout)
    assert started.returncode == 0, started.stderr
    state = json.loads(pid_file.read_text())
    assert state["url"] == f"http://127.0.0.1:{port}" and f"(pid {state['pid']}," in started.stdout
    assert "`invoke sandbox --stop` stops it" in started.stdout and len(started.stdout.strip().splitlines()) == 1
    boto3.client("s3", endpoint_url=state["url"], aws_access_key_id="t", aws_secret_access_key="t").list_buckets()
    again = invoke("sandbox", "--background", "--port", str(free_port()), env=env, cwd=checkout)
    assert again.returncode == 2 and "already runs at" in again.stderr
    stopped = invoke("sandbox", "--stop", env=env, cwd=checkout)
    assert stopped.returncode == 0 and f"sandbox: stopped (pid {state['pid']}" in stopped.stdout, stopped.stderr
    assert not pid_file.exists()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{state['pid']}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # reaped by init once it has exited
    gone = invoke("sandbox", "--stop", env=env, cwd=checkout)
    assert gone.returncode == 2 and gone.stderr.startswith("error: no sandbox runs from this checkout")


def test_the_sandbox_imports_nothing_of_what_it_runs():
    """It plays the platform: serving a job must not import the training code or torch."""
    heavy = ("torch", "pytorch_lightning", "lightning", "project.training.train", "sagemaker", "hydra")
    code = (
        "import sys\nfrom project.sandbox import daemon\n"
        "with daemon.serving(daemon.Settings(port=0, run_jobs=False)):\n    pass\n"
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (a zombie has exited)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
@requires(container=True)
def test_killing_the_sandbox_ends_the_jobs_it_runs(tmp_path, sig):
    """A running job's container (unshare in a session of its own, its PID 1) ran on after the sandbox died."""
    port, env = free_port(), aws_env(tmp_path)
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "invoke", "sandbox", "--port", str(port)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a process group of its own, as a terminal's command has
    )  # fmt: skip
    marker = f"job-{uuid.uuid4().hex}"
    try:
        assert sandbox.stdout.readline().startswith(b"sandbox: AWS at")
        session = boto3.Session(aws_access_key_id="test", aws_secret_access_key="test", region_name=REGION)
        session.client("sagemaker", endpoint_url=f"http://127.0.0.1:{port}").create_training_job(
            TrainingJobName=marker,
            AlgorithmSpecification={
                "TrainingImage": IMAGE,
                "TrainingInputMode": "File",
                "ContainerEntrypoint": [sys.executable, "-c", "import time; time.sleep(600)", marker],
            },
            RoleArn="arn:aws:iam::123456789012:role/sandbox-test",
            OutputDataConfig={"S3OutputPath": "s3://nowhere/jobs"},
            ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
            StoppingCondition={"MaxRuntimeInSeconds": 3600},
        )
        wait_for(lambda: len(processes_with(marker)) >= 2, "the job's unshare and its PID 1")  # its session's
        os.killpg(sandbox.pid, sig)
        sandbox.wait(timeout=60)
        wait_for(lambda: not processes_with(marker), "the job's processes ended with the sandbox", timeout=30)
    finally:
        for pid in processes_with(marker):  # never leave one behind, even when the test fails
            os.kill(pid, signal.SIGKILL)
        if sandbox.poll() is None:
            os.killpg(sandbox.pid, signal.SIGKILL)
            sandbox.wait()


def test_a_names_newest_jobs_are_listed_first_however_many_jobs_there_are(moto_endpoint):
    """The tests' endpoint (no SageMaker service entered) lists as AWS does: moto took the page of
    the oldest jobs first and filtered it after, so a name's newest jobs were missing once another
    name had more jobs than a page (the launch summary's start-up prediction saw no history)."""
    sm = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name=REGION)
    aws = {"sagemaker": sm}
    tag = uuid.uuid4().hex[:6]
    for _ in range(3):
        create_job(aws, f"others-{tag}")
    mine = [create_job(aws, f"mine-{tag}") for _ in range(3)]
    pages = []
    request = {"NameContains": f"mine-{tag}", "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 2}
    while True:
        page = sm.list_training_jobs(**request)
        pages.append([j["TrainingJobName"] for j in page["TrainingJobSummaries"]])
        if "NextToken" not in page:
            break
        request["NextToken"] = page["NextToken"]
    assert pages == [mine[:0:-1], mine[:1]]
