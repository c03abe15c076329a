"""The environment of a job's container, as SageMaker and a framework image's toolkit set it on each host."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from project.sandbox.optml import CONTAINER_ROOT, HOST, Desc, config_files, job_hosts

# What a container inherits from this machine: enough to find python3 and the AWS endpoint.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYENV_ROOT", "PYENV_VERSION")
AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")


def uses_sdk_drivers(desc: Desc) -> bool:
    return any(c["ChannelName"] == "sm_drivers" for c in desc.get("InputDataConfig", []))


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


def _as_arg(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _num_gpus() -> int:
    try:
        listing = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def _path_env() -> dict[str, str]:
    return {
        "SM_MODEL_DIR": f"{CONTAINER_ROOT}/model",
        "SM_INPUT_DIR": f"{CONTAINER_ROOT}/input",
        "SM_INPUT_CONFIG_DIR": f"{CONTAINER_ROOT}/input/config",
        "SM_OUTPUT_DIR": f"{CONTAINER_ROOT}/output",
        "SM_OUTPUT_DATA_DIR": f"{CONTAINER_ROOT}/output/data",
        "SM_OUTPUT_INTERMEDIATE_DIR": f"{CONTAINER_ROOT}/output/intermediate",
    }


def _training_env(desc: Desc, env: dict[str, str], channels: list[str], hps: dict[str, Any]) -> dict[str, Any]:
    resource = json.loads(env["SM_RESOURCE_CONFIG"])
    return {
        "channel_input_dirs": {c: env[f"SM_CHANNEL_{c.upper()}"] for c in channels},
        "current_host": resource["current_host"],
        "hosts": resource["hosts"],
        "hyperparameters": hps,
        "input_data_config": json.loads(env["SM_INPUT_DATA_CONFIG"]),
        "job_name": desc["TrainingJobName"],
        "model_dir": env["SM_MODEL_DIR"],
        "num_cpus": int(env["SM_NUM_CPUS"]),
        "num_gpus": int(env["SM_NUM_GPUS"]),
        "output_data_dir": env["SM_OUTPUT_DATA_DIR"],
        "resource_config": resource,
        "network_interface_name": resource["network_interface_name"],
    }


def toolkit_env(desc: Desc, host: str = HOST) -> dict[str, str]:
    """The SM_* variables the sagemaker-training toolkit exports on `host` before it runs a user script."""
    channels = sorted(c["ChannelName"] for c in desc.get("InputDataConfig", []))
    files = config_files(desc, host)
    resource = files["resourceconfig.json"]
    hps = {k: _maybe_json(v) for k, v in desc.get("HyperParameters", {}).items()}
    env = _path_env() | {
        "SM_CHANNELS": json.dumps(channels),
        "SM_HOSTS": json.dumps(resource["hosts"]),
        "SM_CURRENT_HOST": resource["current_host"],
        "SM_CURRENT_INSTANCE_TYPE": resource["current_instance_type"],
        "SM_NETWORK_INTERFACE_NAME": resource["network_interface_name"],
        "SM_NUM_CPUS": str(os.cpu_count() or 1),
        "SM_NUM_GPUS": str(_num_gpus()),
        "SM_LOG_LEVEL": "20",
        "SM_HPS": json.dumps(hps),
        "SM_USER_ARGS": json.dumps([a for k, v in hps.items() for a in (f"--{k}", _as_arg(v))]),
        "SM_RESOURCE_CONFIG": json.dumps(resource),
        "SM_INPUT_DATA_CONFIG": json.dumps(files["inputdataconfig.json"]),
    }
    env |= {f"SM_CHANNEL_{c.upper()}": f"{CONTAINER_ROOT}/input/data/{c}" for c in channels}
    env |= {f"SM_HP_{k.upper()}": _as_arg(v) for k, v in hps.items()}
    env["SM_TRAINING_ENV"] = json.dumps(_training_env(desc, env, channels, hps))
    return env


def _cores() -> int:
    """The cores this process may run on (its affinity), as torch counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_instance(instances: int) -> str | None:
    """OMP_NUM_THREADS for each of a job's `instances` containers: their share of this machine's cores.

    On SageMaker each instance has cores of its own; here the N instances share this machine's. Unset,
    each instance's torch starts a thread per core of the machine (N times too many), and a step's
    collective waits on a peer whose threads are not running: a two-instance job on two cores took
    ten times as long a step (0.67 s, not 0.05). One instance: unset, all the cores, as on SageMaker.
    """
    return str(max(1, _cores() // instances)) if instances > 1 else None


def container_env(desc: Desc, env_extra: dict[str, str] | None = None, host: str = HOST) -> dict[str, str]:
    """The environment of `host`'s container: the platform's variables and the job's Environment.

    With the SDK's drivers the SM_* variables are not the platform's: sm_train.sh sets them
    (sm_drivers/scripts/environment.py), exactly as it must on SageMaker. Other jobs get them
    as the sagemaker-training toolkit of a framework image would set them. A job of several
    instances gets each one's share of the cores (threads_per_instance) unless its Environment
    says OMP_NUM_THREADS.
    """
    region = desc["TrainingJobArn"].split(":")[3]
    env = {k: os.environ[k] for k in PASSTHROUGH_ENV + AWS_ENV if k in os.environ}
    if not uses_sdk_drivers(desc):
        env.update(toolkit_env(desc, host))
    threads = threads_per_instance(len(job_hosts(desc)))
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    env.update(
        TRAINING_JOB_NAME=desc["TrainingJobName"],
        TRAINING_JOB_ARN=desc["TrainingJobArn"],
        AWS_REGION=region,
        AWS_DEFAULT_REGION=region,
        # job.image=aws: the job's pip checks the requirements against this environment (the
        # image here) and never downloads into it (a job's Environment may say PIP_NO_INDEX=0).
        PIP_NO_INDEX="1",
    )
    env.update(desc.get("Environment") or {})
    env.update(env_extra or {})  # last: the container must reach the AWS that recorded the job
    return env
