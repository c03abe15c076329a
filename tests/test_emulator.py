"""The sandbox's SageMaker runs ModelTrainer (SDK v3) jobs recorded by moto, end to end.

Each job is created by the real SDK against moto over HTTP, run by project.sandbox (what
`invoke sandbox` serves) with the SDK's own driver scripts, and its artifacts brought home by
project.aws.fetch.
"""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from project.aws.cost import instance_price, job_cost
from project.aws.fetch import fetch_job
from project.aws.session import aws_clients
from project.core.sagemaker_names import CHECKPOINT_DIR, DATA_CHANNEL
from project.sandbox import service as emulator
from tests.requires import skip_unless

ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}
        ],
    }
)
METRICS = [{"Name": "test_acc", "Regex": r"test_acc=([0-9.]+)"}, {"Name": "epoch", "Regex": r"epoch=([0-9]+)"}]


@pytest.fixture(scope="module")
def clients(moto_endpoint):
    skip_unless(container=True)
    return aws_clients("us-east-1", moto_endpoint)


@pytest.fixture(scope="module")
def infra(clients):
    suffix = uuid.uuid4().hex[:8]
    data, artifacts = f"data-{suffix}", f"artifacts-{suffix}"
    for bucket in (data, artifacts):
        clients.s3.create_bucket(Bucket=bucket)
    clients.s3.put_object(Bucket=data, Key="datasets/tiny/numbers.txt", Body=b"1 2 3\n")
    clients.s3.put_object(Bucket=data, Key="datasets/tiny/nested/more.txt", Body=b"4\n")
    role = clients.client("iam").create_role(RoleName=f"sm-{suffix}", AssumeRolePolicyDocument=ROLE_POLICY)
    return {"data": data, "artifacts": artifacts, "role": role["Role"]["Arn"]}


def write_source(folder: Path, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(textwrap.dedent(script))
    return folder


def model_trainer(clients, infra, source_dir: Path, command=None, entry_script=None, distributed=None, **extra):
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, SourceCode
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import InputData

    session = Session(
        boto_session=clients.session,
        default_bucket=infra["artifacts"],
        default_bucket_prefix="code",
        sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
    )
    trainer = ModelTrainer(
        sagemaker_session=session,
        role=infra["role"],
        base_job_name="emu",
        training_image="123456789012.dkr.ecr.us-east-1.amazonaws.com/project:test",
        source_code=SourceCode(source_dir=str(source_dir), command=command, entry_script=entry_script),
        distributed=distributed,
        compute=Compute(instance_type="ml.m5.xlarge", instance_count=1),
        output_data_config=OutputDataConfig(s3_output_path=f"s3://{infra['artifacts']}/jobs/"),
        checkpoint_config=CheckpointConfig(
            s3_uri=f"s3://{infra['artifacts']}/checkpoints/emu/", local_path=CHECKPOINT_DIR
        ),
        input_data_config=[InputData(channel_name=DATA_CHANNEL, data_source=f"s3://{infra['data']}/datasets/tiny/")],
        environment={"PYTHONUNBUFFERED": "1", "RUN_MARK": "from-the-job"},
        **extra,
    )
    return trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRICS])


def create_plain_job(clients, infra, command, **request) -> str:
    """A job created with the bare API: the command is the container's entry point."""
    name = f"plain-{uuid.uuid4().hex[:8]}"
    defaults = dict(
        TrainingJobName=name,
        AlgorithmSpecification={
            "TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/project:test",
            "TrainingInputMode": "File",
            "ContainerEntrypoint": command[:1],
            **({"ContainerArguments": command[1:]} if command[1:] else {}),  # the API refuses an empty list
        },
        RoleArn=infra["role"],
        InputDataConfig=[
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{infra['data']}/datasets/tiny"}
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": f"s3://{infra['artifacts']}/plain"},
        ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
    )
    clients.sagemaker.create_training_job(**(defaults | request))
    return name


def launch(trainer) -> str:
    trainer.train(wait=False, logs=False)
    return trainer._latest_training_job.training_job_name


COMMAND_SCRIPT = """
    import json, os, pathlib, sys
    print("channels", sorted(os.listdir("/opt/ml/input/data")), flush=True)
    data = pathlib.Path(os.environ["SM_CHANNEL_TRAIN"])
    print("data", (data / "numbers.txt").read_text().strip(), (data / "nested" / "more.txt").read_text().strip())
    print("mark", os.environ["RUN_MARK"], "job", os.environ["TRAINING_JOB_NAME"], "gpus", os.environ["SM_NUM_GPUS"])
    print("argv", sys.argv[1:])
    ckpt = pathlib.Path("/opt/ml/checkpoints")
    print("resumed", sorted(p.name for p in ckpt.iterdir()))
    (ckpt / "step-1.ckpt").write_text("state")
    pathlib.Path(os.environ["SM_MODEL_DIR"], "model.txt").write_text("weights")
    pathlib.Path(os.environ["SM_OUTPUT_DATA_DIR"], "metrics.json").write_text(json.dumps({"test_acc": 0.5}))
    print("epoch=1 test_acc=0.25")
    print("epoch=2 test_acc=0.5")
"""


def test_created_job_is_recorded_like_the_service_does(clients, infra, tmp_path):
    source = write_source(tmp_path / "src", "print('never run')\n")
    with emulator.sagemaker_service():
        name = launch(model_trainer(clients, infra, source, command="python3 train.py"))
        time.sleep(0.01)
        later = create_plain_job(clients, infra, ["true"])
        desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
        newest = clients.sagemaker.list_training_jobs(SortBy="CreationTime", SortOrder="Descending", MaxResults=1)
        emu = clients.sagemaker.list_training_jobs(NameContains="emu-", SortOrder="Descending", MaxResults=1)
        clients.sagemaker.stop_training_job(TrainingJobName=later)
        stopped = clients.sagemaker.describe_training_job(TrainingJobName=later)
    assert desc["TrainingJobStatus"] == "InProgress" and "ModelArtifacts" not in desc
    assert desc["Environment"] == {"PYTHONUNBUFFERED": "1", "RUN_MARK": "from-the-job"}
    assert desc["AlgorithmSpecification"]["MetricDefinitions"] == METRICS
    assert desc["AlgorithmSpecification"]["ContainerEntrypoint"] == ["/bin/bash"]
    assert [c["ChannelName"] for c in desc["InputDataConfig"]] == ["train", "code", "sm_drivers"]
    assert [j["TrainingJobName"] for j in newest["TrainingJobSummaries"]] == [later]
    assert [j["TrainingJobName"] for j in emu["TrainingJobSummaries"]] == [name]  # filtered before paging
    assert stopped["TrainingJobStatus"] == "Stopped"


def test_command_job_runs_with_the_sdk_drivers_and_comes_home(clients, infra, tmp_path):
    clients.s3.put_object(Bucket=infra["artifacts"], Key="checkpoints/emu/step-0.ckpt", Body=b"earlier")
    source = write_source(tmp_path / "src", COMMAND_SCRIPT)
    with emulator.sagemaker_service() as service:
        name = launch(model_trainer(clients, infra, source, command="python3 train.py --lr 0.1"))
        run = service.run_job(name, tmp_path / "job")
    run.check()
    assert "channels ['code', 'sm_drivers', 'train']" in run.stdout
    assert "data 1 2 3 4" in run.stdout
    assert f"mark from-the-job job {name} gpus 0" in run.stdout
    assert "argv ['--lr', '0.1']" in run.stdout
    assert "resumed ['step-0.ckpt']" in run.stdout

    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobStatus"] == "Completed" and desc["SecondaryStatus"] == "Completed"
    assert (
        desc["ModelArtifacts"]["S3ModelArtifacts"]
        == run.model_uri
        == f"s3://{infra['artifacts']}/jobs/{name}/output/model.tar.gz"
    )
    assert {m["MetricName"]: m["Value"] for m in desc["FinalMetricDataList"]} == {"test_acc": 0.5, "epoch": 2.0}
    assert desc["BillableTimeInSeconds"] >= 1 and desc["TrainingEndTime"] >= desc["TrainingStartTime"]

    streams = clients.logs.describe_log_streams(logGroupName=emulator.LOG_GROUP, logStreamNamePrefix=f"{name}/")
    assert [s["logStreamName"] for s in streams["logStreams"]] == [run.log_stream]
    events = clients.logs.get_log_events(
        logGroupName=emulator.LOG_GROUP, logStreamName=run.log_stream, startFromHead=True
    )
    assert "epoch=2 test_acc=0.5" in [e["message"] for e in events["events"]]

    dest = fetch_job(
        clients.s3,
        run.model_uri,
        run.output_uri,
        desc["CheckpointConfig"]["S3Uri"],
        tmp_path / "runs" / name,
        progress=False,
        echo=lambda _: None,
    )
    assert (dest / "model" / "model.txt").read_text() == "weights"
    assert json.loads((dest / "metrics.json").read_text()) == {"test_acc": 0.5}
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == ["step-0.ckpt", "step-1.ckpt"]


TORCHRUN_SCRIPT = """
    import os, pathlib, sys
    # One write per line: the two ranks share the job's unbuffered stdout.
    sys.stdout.write(f"argv {sys.argv[1:]} world {os.environ['LOCAL_WORLD_SIZE']} rank {os.environ['RANK']}\\n")
    pathlib.Path(os.environ["SM_MODEL_DIR"], f"rank{os.environ['RANK']}.txt").write_text("ok")
    print("test_acc=0.75")
"""


def test_torchrun_entry_script_job(clients, infra, tmp_path):
    from sagemaker.train.distributed import Torchrun

    source = write_source(tmp_path / "src", TORCHRUN_SCRIPT)
    trainer = model_trainer(
        clients,
        infra,
        source,
        entry_script="train.py",
        distributed=Torchrun(process_count_per_node=2),
        hyperparameters={"config_hash": "abc123", "epochs": 2},
    )
    with emulator.sagemaker_service() as service:
        name = launch(trainer)
        run = service.run_job(name, tmp_path / "job")
    run.check()
    assert "torchrun --nnodes=1 --nproc_per_node=2 train.py --config_hash abc123 --epochs 2" in run.stdout
    assert "argv ['--config_hash', 'abc123', '--epochs', '2'] world 2 rank 1" in run.stdout, run.stdout
    assert sorted(p.name for p in (run.tree / "model").iterdir()) == ["rank0.txt", "rank1.txt"]


def test_failing_job_ends_failed_with_the_failure_file(clients, infra, tmp_path):
    script = """
        import sys
        open("/opt/ml/output/failure", "w").write("ValueError: bad batch size")
        print("about to fail", flush=True)
        sys.exit(3)
    """
    source = write_source(tmp_path / "src", script)
    with emulator.sagemaker_service() as service:
        name = launch(model_trainer(clients, infra, source, command="python3 train.py"))
        run = service.run_job(name, tmp_path / "job")
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert run.status == desc["TrainingJobStatus"] == "Failed" and run.returncode == 3
    assert desc["FailureReason"] == "AlgorithmError: ValueError: bad batch size, exit code: 3"
    assert "ModelArtifacts" not in desc and run.model_uri is None


def test_stop_is_docker_stop_sigterm_reaches_pid1_only(clients, infra, tmp_path):
    """With the SDK's bash drivers as PID 1, the Python process never sees the stop's SIGTERM."""
    script = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
        print("ready", flush=True)
        time.sleep(60)
    """
    source = write_source(tmp_path / "src", script)
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs", stop_grace=1.0) as service:
        name = launch(model_trainer(clients, infra, source, command="python3 train.py"))
        deadline = time.time() + 60
        while "ready" not in _log(clients, name) and time.time() < deadline:
            time.sleep(0.2)
        clients.sagemaker.stop_training_job(TrainingJobName=name)
        run = service.result(name, timeout=60)
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert run.status == desc["TrainingJobStatus"] == "Stopped"
    assert "got SIGTERM" not in run.stdout  # PID 1 (bash) ignored it; SIGKILL ended the job
    assert run.seconds < 30, run.stdout


def _log(clients, name):
    try:
        streams = clients.logs.describe_log_streams(logGroupName=emulator.LOG_GROUP, logStreamNamePrefix=f"{name}/")[
            "logStreams"
        ]
    except clients.logs.exceptions.ResourceNotFoundException:
        return ""  # no job has logged yet
    if not streams:
        return ""
    events = clients.logs.get_log_events(
        logGroupName=emulator.LOG_GROUP, logStreamName=streams[0]["logStreamName"], startFromHead=True
    )
    return "\n".join(e["message"] for e in events["events"])


def test_plain_entrypoint_gets_the_toolkit_environment_and_max_runtime_stops_it(clients, infra, tmp_path):
    """A job without the SDK's drivers: PID 1 is python itself, so it does get the SIGTERM."""
    script = textwrap.dedent("""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: (print("got SIGTERM", flush=True), sys.exit(0)))
        print("hps", os.environ["SM_HPS"], "channel", os.environ["SM_CHANNEL_TRAIN"], "pid", os.getpid(), flush=True)
        time.sleep(30)
    """)
    with emulator.sagemaker_service() as service:
        name = create_plain_job(clients, infra, ["python3", "-c", script], HyperParameters={"epochs": "2"})
        run = service.run_job(name, tmp_path / "job", timeout=3)
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert 'hps {"epochs": 2} channel /opt/ml/input/data/train pid 1' in run.stdout
    assert "got SIGTERM" in run.stdout
    assert (desc["TrainingJobStatus"], desc["SecondaryStatus"]) == ("Stopped", "MaxRuntimeExceeded")
    assert (
        desc["ModelArtifacts"]["S3ModelArtifacts"]
        == run.model_uri
        == f"s3://{infra['artifacts']}/plain/{name}/output/model.tar.gz"
    )


HOSTS_SCRIPT = """
import json, os, pathlib, signal, socket, sys, time
config = json.loads(pathlib.Path("/opt/ml/input/config/resourceconfig.json").read_text())
host, fail = config["current_host"], sys.argv[1] == "fail"
signal.signal(signal.SIGTERM, lambda *_: (print(host, "got SIGTERM", flush=True), sys.exit(0)))
shards = sorted(p.name for p in pathlib.Path("/opt/ml/input/data/shards").rglob("*.txt"))
env, threads = os.environ["SM_CURRENT_HOST"], os.environ.get("OMP_NUM_THREADS")
print(host, "of", config["hosts"], "env", env, "shards", shards, "threads", threads, flush=True)
pathlib.Path("/opt/ml/checkpoints", host + ".ckpt").write_text(host)
pathlib.Path("/opt/ml/model", host + ".txt").write_text(host)
port = int(os.environ[PORT_ENV])
if host == "algo-1":
    with socket.create_server(("algo-1", port)) as server:
        print("algo-1 heard", server.accept()[0].recv(100).decode(), flush=True)
    print("test_acc=0.5", flush=True)
    if fail:
        time.sleep(60)  # until algo-2's failure stops it
else:
    for _ in range(300):
        try:
            conn = socket.create_connection(("algo-1", port))
            break
        except OSError:
            time.sleep(0.1)
    conn.sendall(host.encode())
    conn.close()
    print("test_acc=0.1", flush=True)
    if fail:
        pathlib.Path("/opt/ml/output/failure").write_text("RuntimeError: " + host + " broke")
        sys.exit(3)
if sys.argv[1] == "stop":
    print(host, "ready", flush=True)
    time.sleep(60)  # until StopTrainingJob
"""


def _logs_of_every_host(clients, name) -> str:
    try:
        streams = clients.logs.describe_log_streams(logGroupName=emulator.LOG_GROUP, logStreamNamePrefix=f"{name}/")
    except clients.logs.exceptions.ResourceNotFoundException:
        return ""  # no job has logged yet
    return "\n".join(
        e["message"]
        for s in streams["logStreams"]
        for e in clients.logs.get_log_events(
            logGroupName=emulator.LOG_GROUP, logStreamName=s["logStreamName"], startFromHead=True
        )["events"]
    )


def test_two_instances_each_with_its_own_tree_reach_each_other_by_name_and_one_failing_stops_the_other(
    clients, infra, tmp_path
):
    """InstanceCount=2: a container per host, each with its resourceconfig.json, its share of a
    ShardedByS3Key channel and its log stream; algo-2 reaches algo-1 by name on the port the sandbox
    gives (project.core.runtime.MASTER_PORT_ENV). Completed: the model is both hosts' files, every
    host's checkpoints reach S3, billing counts both instances. Then algo-2 fails: the job fails with
    its FailureReason, and algo-1, still running, is stopped (SIGTERM) rather than left to hang. A third
    job is stopped by StopTrainingJob, a fourth by its MaxRuntimeInSeconds: both hosts get the SIGTERM.
    Each host's torch gets its share of this machine's cores (OMP_NUM_THREADS), unless the job's
    Environment says how many (the third's)."""
    import io
    import tarfile

    from project.core.runtime import MASTER_PORT_ENV

    script = HOSTS_SCRIPT.replace("PORT_ENV", repr(MASTER_PORT_ENV))
    tiny = f"s3://{infra['data']}/datasets/tiny"
    shards = {"ChannelName": "shards", "DataSource": {"S3DataSource": {
        "S3DataType": "S3Prefix", "S3Uri": tiny, "S3DataDistributionType": "ShardedByS3Key"}}}  # fmt: skip
    names = {}
    with emulator.sagemaker_service(run_jobs=True, workdir=tmp_path / "jobs", stop_grace=5.0) as service:
        # "max": the stop script again, ended by its MaxRuntimeInSeconds instead (8 s: long after both started)
        for outcome, argument, limit in (
            ("ok", "ok", 3600),
            ("fail", "fail", 3600),
            ("stop", "stop", 3600),
            ("max", "stop", 8),
        ):
            names[outcome] = create_plain_job(
                clients, infra, ["python3", "-c", script, argument],
                ResourceConfig={"InstanceType": "ml.m5.xlarge", "InstanceCount": 2, "VolumeSizeInGB": 10},
                StoppingCondition={"MaxRuntimeInSeconds": limit},
                CheckpointConfig={"S3Uri": f"s3://{infra['artifacts']}/checkpoints/{outcome}-{uuid.uuid4().hex[:6]}"},
                InputDataConfig=[shards],
                **({"Environment": {"OMP_NUM_THREADS": "3"}} if outcome == "stop" else {}),
            )  # fmt: skip
        deadline = time.time() + 60
        while _logs_of_every_host(clients, names["stop"]).count(" ready") < 2 and time.time() < deadline:
            time.sleep(0.2)
        clients.sagemaker.stop_training_job(TrainingJobName=names["stop"])
        runs = {outcome: (name, service.result(name, timeout=60)) for outcome, name in names.items()}
    name, run = runs["ok"]
    run.check()
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # half the cores each
    assert f"[algo-1] algo-1 of ['algo-1', 'algo-2'] env algo-1 shards ['more.txt'] threads {share}" in run.stdout
    assert f"[algo-2] algo-2 of ['algo-1', 'algo-2'] env algo-2 shards ['numbers.txt'] threads {share}" in run.stdout
    assert "[algo-1] algo-1 heard algo-2" in run.stdout
    assert sorted(run.log_streams) == ["algo-1", "algo-2"]
    assert _log(clients, name)  # each host's own stream
    for host, stream in run.log_streams.items():
        assert stream.startswith(f"{name}/{host}-")
    bucket, key = run.model_uri.removeprefix("s3://").split("/", 1)
    with tarfile.open(fileobj=io.BytesIO(clients.s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        assert sorted(tar.getnames()) == ["algo-1.txt", "algo-2.txt"]
    bucket, prefix = desc["CheckpointConfig"]["S3Uri"].removeprefix("s3://").split("/", 1)
    listed = clients.s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[-1] for o in listed) == ["algo-1.ckpt", "algo-2.ckpt"]
    # One instance's wall clock, which SageMaker bills on each instance: the cost is twice the price of it.
    billed = desc["BillableTimeInSeconds"]
    assert 1 <= billed <= (desc["TrainingEndTime"] - desc["TrainingStartTime"]).total_seconds() + 1
    assert job_cost(desc) == pytest.approx(2 * instance_price(desc["ResourceConfig"]["InstanceType"]) * billed / 3600)

    name, run = runs["fail"]
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert run.status == desc["TrainingJobStatus"] == "Failed" and run.returncode == 3, run.stdout
    assert desc["FailureReason"] == "AlgorithmError: RuntimeError: algo-2 broke, exit code: 3"
    assert "[algo-1] algo-1 got SIGTERM" in run.stdout  # stopped, not left running
    assert run.seconds < 30, run.stdout

    name, run = runs["stop"]
    assert run.status == clients.sagemaker.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] == "Stopped"
    assert "[algo-1] algo-1 got SIGTERM" in run.stdout and "[algo-2] algo-2 got SIGTERM" in run.stdout, run.stdout
    assert "[algo-1] algo-1 of ['algo-1', 'algo-2'] env algo-1 shards ['more.txt'] threads 3" in run.stdout

    name, run = runs["max"]  # MaxRuntime is the job's, not a host's: both hosts get the SIGTERM at once
    desc = clients.sagemaker.describe_training_job(TrainingJobName=name)
    assert (run.status, desc["TrainingJobStatus"], desc["SecondaryStatus"]) == (
        "Stopped",
        "Stopped",
        "MaxRuntimeExceeded",
    )
    assert "[algo-1] algo-1 got SIGTERM" in run.stdout and "[algo-2] algo-2 got SIGTERM" in run.stdout, run.stdout
