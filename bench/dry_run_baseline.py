"""The smallest honest script that prints the CreateTrainingJob request `invoke train --dry-run` prints.

No Hydra, no project code, no checks: the SageMaker SDK's ModelTrainer is built with the same
settings the product derives (`bench/cli.py` passes them as JSON) and asked for the request by the
SDK's own builder. The endpoint comes from AWS_ENDPOINT_URL. Used by bench/cli.py:

    python bench/dry_run_baseline.py job.json
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import boto3
from sagemaker.core.helper.session_helper import Session
from sagemaker.core.shapes import MetricDefinition, StoppingCondition
from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, SourceCode
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import InputData, RetryStrategy
from sagemaker.train.distributed import Torchrun


def main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    endpoint = os.environ["AWS_ENDPOINT_URL"]

    class EndpointSession(boto3.session.Session):
        def client(self, *args, **kwargs):
            kwargs.setdefault("endpoint_url", endpoint)
            return super().client(*args, **kwargs)

    session = Session(
        boto_session=EndpointSession(region_name=job["region"]),
        default_bucket=job["artifacts_bucket"],
        default_bucket_prefix="code",
        sagemaker_config={"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}},
    )
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "source"
        shutil.copytree(job["project_dir"], source / "project", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (source / "config.yaml").write_text(job["config_yaml"])
        (source / "sm_entry.py").write_text(job["entry_source"])
        trainer = ModelTrainer(
            sagemaker_session=session,
            role=job["role_arn"],
            base_job_name=job["base_name"],
            training_image=job["image_uri"],
            source_code=SourceCode(source_dir=str(source), entry_script="sm_entry.py"),
            distributed=Torchrun(process_count_per_node=job["processes_per_node"]),
            compute=Compute(
                instance_type=job["instance_type"],
                instance_count=job["instance_count"],
                volume_size_in_gb=job["volume_size_gb"],
            ),
            stopping_condition=StoppingCondition(max_runtime_in_seconds=job["max_run_seconds"]),
            output_data_config=OutputDataConfig(s3_output_path=job["output_uri"]),
            checkpoint_config=CheckpointConfig(s3_uri=job["checkpoint_uri"], local_path=job["checkpoint_dir"]),
            input_data_config=[InputData(channel_name=job["data_channel"], data_source=job["data_uri"])],
            environment=job["environment"],
            hyperparameters=job["hyperparameters"],
            tags=[{"key": k, "value": v} for k, v in job["tags"].items()],
        ).with_metric_definitions(
            [MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in job["metric_definitions"]]
        )
        trainer = trainer.with_retry_strategy(RetryStrategy(maximum_retry_attempts=job["retry_attempts"]))
        print(json.dumps(trainer._create_training_job_args(boto3=True), indent=2, sort_keys=True, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
