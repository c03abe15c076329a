"""CLI latency: what a user waits for before anything happens.

1. `invoke --list` against `python -c pass`: the floor of any Python command. tasks.py must not
   import torch or the SageMaker SDK, so listing the tasks should cost little above the floor.
2. `invoke train --dry-run` (compose, validate, check ECR and S3, stage the code, print the
   CreateTrainingJob request) against bench/dry_run_baseline.py, a bare script that builds the same
   job with ModelTrainer and calls the SDK's request builder. Both talk to a moto server set up
   here with boto3 (buckets, ECR image tag, IAM role, data objects); the infra reaches the product
   as overrides and the endpoint as AWS_ENDPOINT_URL, as a user of existing resources would pass them.

Both are wall times of fresh subprocesses; executables are called directly (not through pyenv
shims), so the interpreter start-up is the same on both sides.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .common import ROOT, interleaved, invoke_script, local_aws, row, run_timed, user_environ


def _job_spec(aws, overrides) -> dict:
    """The settings the product derives for this job, for the baseline script to use as given."""
    from project.aws import sdk
    from project.aws.image import JobImage
    from project.aws.infra import Infra
    from project.aws.plan import plan_job
    from project.aws.staging import ENTRY_SOURCE, PROJECT_DIR, source_revision
    from project.core.config import compose, to_yaml, with_gpus
    from project.core.sagemaker_names import CHECKPOINT_DIR, DATA_CHANNEL

    cfg = compose(overrides)
    infra = Infra(aws.data_bucket, aws.artifacts_bucket, aws.repository_url, aws.role_arn, "us-east-1")
    plan = plan_job(
        cfg, infra, JobImage("custom", f"{aws.repository_url}:{aws.image_tag}", None), revision=source_revision()
    )
    keys = (
        "base_name",
        "image_uri",
        "role_arn",
        "region",
        "instance_type",
        "instance_count",
        "processes_per_node",
        "volume_size_gb",
        "max_run_seconds",
        "output_uri",
        "checkpoint_uri",
        "environment",
        "hyperparameters",
        "tags",
    )
    spec = {key: getattr(plan, key) for key in keys}
    spec["data_uri"] = plan.channels[DATA_CHANNEL]
    spec.update(
        artifacts_bucket=aws.artifacts_bucket,
        project_dir=str(PROJECT_DIR),
        config_yaml=to_yaml(with_gpus(cfg, plan.gpus_per_node)),  # as the product stages it
        entry_source=ENTRY_SOURCE.read_text(),
        metric_definitions=sdk.metric_definitions(plan.metrics),
        data_channel=DATA_CHANNEL,
        checkpoint_dir=CHECKPOINT_DIR,
        retry_attempts=sdk.CAPACITY_RETRY_ATTEMPTS,
    )
    return spec


STAGED_CHANNELS = ("code", "sm_drivers")  # uploaded by the SDK where each side's naming puts them


def _request(stdout: str) -> dict:
    """The JSON request printed after the summary (the product) or alone (the baseline), with the
    generated job name (a timestamp, also in the code channel's S3 prefix) replaced by <job>."""
    text = stdout if stdout.startswith("{") else stdout[stdout.index("\n{") + 1 :]
    name = json.loads(text)["TrainingJobName"]
    request = json.loads(text.replace(name, "<job>"))
    for channel in request.get("InputDataConfig", []):
        if channel["ChannelName"] in STAGED_CHANNELS:  # the SDK stages them under a timestamped prefix
            channel["DataSource"]["S3DataSource"]["S3Uri"] = "<staged>"
    return request


def _same_request(aws, product_argv, baseline_argv) -> dict:
    """Both sides must describe the same job: the requests, job names aside, must be equal."""
    import subprocess

    outs = [
        subprocess.run(argv, env=aws.env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for argv in (product_argv, baseline_argv)
    ]
    product, baseline = (_request(out) for out in outs)
    differing = sorted(k for k in set(product) | set(baseline) if product.get(k) != baseline.get(k))
    if differing:
        raise RuntimeError(f"the baseline builds a different job: {differing} differ")
    return {"request_keys": sorted(product), "identical": True}


def run(reps: int) -> dict:
    python = sys.executable
    plain_env = user_environ()
    listing = interleaved(
        {
            "invoke_list": lambda: run_timed([invoke_script(), "--list"], plain_env),
            "python_pass": lambda: run_timed([python, "-c", "pass"], plain_env),
        },
        reps,
    )
    with local_aws() as aws, tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        overrides = aws.overrides()
        spec_path = Path(tmp) / "job.json"
        spec_path.write_text(json.dumps(_job_spec(aws, overrides)))
        product = [invoke_script(), "train", "--dry-run", *overrides]
        baseline = [python, str(ROOT / "bench" / "dry_run_baseline.py"), str(spec_path)]
        check = _same_request(aws, product, baseline)
        dry = interleaved(
            {
                "invoke_dry_run": lambda: run_timed(product, aws.env),
                "baseline": lambda: run_timed(baseline, aws.env),
            },
            reps,
        )
    return {
        "dry_run_request_check": check,
        "rows": [
            row(
                "cli: invoke --list",
                "invoke --list",
                listing["invoke_list"],
                "python -c pass",
                listing["python_pass"],
                12.0,
            ),
            row(
                "cli: train --dry-run (moto)",
                "invoke train --dry-run",
                dry["invoke_dry_run"],
                "ModelTrainer script",
                dry["baseline"],
                1.2,
            ),
        ],
    }
