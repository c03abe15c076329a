"""SageMaker's names that the laptop side and the container side must agree on.

The planner and SDK glue (project.aws), the training code in the container (project.core.runtime,
project.training.train, project.training.artifacts), the fetch that brings a job home and the task parser
(project.face.cli) all import them from here. A module of its own, importing nothing but `re`: the
torch-free transfer side, the boto-free container side and `invoke --list` may all import it at
no cost, which project.core.runtime (the container's environment) or project.aws (the AWS side) could
not promise all three.
"""

from __future__ import annotations

import re

DATA_CHANNEL = "train"  # the input channel that carries the raw dataset files (SM_CHANNEL_TRAIN)
# A sweep job's own resolved config.yaml (SM_CHANNEL_CONFIG): its code channel is the sweep's shared one.
CONFIG_CHANNEL = "config"
CHECKPOINT_DIR = "/opt/ml/checkpoints"  # CheckpointConfig.LocalPath: synced to the job's S3 checkpoint URI
LOG_GROUP = "/aws/sagemaker/TrainingJobs"  # where SageMaker sends every training job's log streams
JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # the API's TrainingJobName pattern
# Written by the run into the output data dir (output.tar.gz); `invoke fetch` copies it to the run root.
METRICS_FILE = "metrics.json"
PROJECT_TAG = ("project", "lightning-sagemaker")  # on every job, model and endpoint: what `invoke endpoints` lists
# trainer.init_from on SageMaker: the earlier model arrives in this input channel (SM_CHANNEL_MODEL, File
# mode, the content type AWS's incremental-training docs give), its lineage in the job's environment and tags.
MODEL_CHANNEL = "model"
MODEL_CONTENT_TYPE = "application/x-sagemaker-model"
PARENT_RUN_ENV = "INIT_FROM_RUN"
PARENT_HASH_ENV = "INIT_FROM_CONFIG_HASH"
PARENT_RUN_TAG = "parent-run"
PARENT_HASH_TAG = "parent-config-hash"
# logger=mlflow on SageMaker: the staged code's commit, for the MLflow run's git-sha tag (the job's tag has it too).
GIT_SHA_ENV = "PROJECT_GIT_SHA"
