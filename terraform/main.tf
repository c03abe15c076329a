provider "aws" {
  region = var.region

  default_tags {
    # Spelled as the job tags are (project/aws/plan.py plan_job: project, image, config-hash):
    # cost-allocation tag keys are case-sensitive, so `Project` and `project` would be two tags.
    tags = merge({ project = var.project, managed-by = "terraform" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # Account and region in the name make the global S3 namespace collision-free per deployment.
  buckets = {
    data      = coalesce(var.data_bucket_name, "${var.project}-data-${local.account_id}-${var.region}")
    artifacts = coalesce(var.artifacts_bucket_name, "${var.project}-artifacts-${local.account_id}-${var.region}")
  }
  repository_name = coalesce(var.repository_name, var.project)
  role_name       = coalesce(var.role_name, "${var.project}-sagemaker-${var.region}")

  # Key prefixes of the artifacts bucket, as project/aws/jobs.py uses them: the SDK stages each
  # job's code under code/ (default_bucket_prefix), SageMaker writes model and output under jobs/
  # and syncs checkpoints under checkpoints/.
  code_prefix       = "code"
  job_output_prefix = "jobs"
  # `invoke train --dry-run` stages its code bundle here (project/aws/staging.py: DRY_RUN_CODE_PREFIX),
  # which expires sooner than a job's: no job ever reads it.
  dry_run_prefix    = "${local.code_prefix}/dry-run"
  checkpoint_prefix = "checkpoints"
  # project/aws/deploy.py: a local run's model.tar.gz under models/<run>/; batch transform input
  # (a local folder uploaded) and output under batch/<run>/<job>/input|output/.
  model_prefix = "models"
  batch_prefix = "batch"
  # project/aws/async_endpoints.py: an async endpoint's requests, answers and refusals under
  # async/<endpoint>/input|output|failure/.
  async_prefix = "async"
  # mlflow.tf: the MLflow tracking server's artifact store (enable_mlflow).
  mlflow_prefix = "mlflow"
  # What an MLflow client does to log one run (the job) and to read runs back (invoke runs --mlflow):
  # the sagemaker-mlflow actions of MLflow's REST calls (SageMaker's MLflow IAM docs).
  mlflow_reading_actions = [
    "sagemaker-mlflow:AccessUI",
    "sagemaker-mlflow:GetExperiment",
    "sagemaker-mlflow:GetExperimentByName",
    "sagemaker-mlflow:SearchExperiments",
    "sagemaker-mlflow:GetRun",
    "sagemaker-mlflow:SearchRuns",
    "sagemaker-mlflow:GetMetricHistory",
    "sagemaker-mlflow:ListArtifacts",
  ]
  mlflow_logging_actions = concat(local.mlflow_reading_actions, [
    "sagemaker-mlflow:CreateExperiment",
    "sagemaker-mlflow:CreateRun",
    "sagemaker-mlflow:UpdateRun",
    "sagemaker-mlflow:LogBatch",
    "sagemaker-mlflow:LogMetric",
    "sagemaker-mlflow:LogParam",
    "sagemaker-mlflow:SetTag",
  ])

  # SageMaker writes training job logs and metrics under these fixed names.
  training_log_group     = "/aws/sagemaker/TrainingJobs"
  metric_namespace       = "/aws/sagemaker/*"
  training_log_group_arn = "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${local.training_log_group}"
  training_jobs_arn      = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}:training-job/*"

  # Serving (invoke deploy / batch-predict): models, endpoint configs, endpoints, transform jobs.
  sagemaker_arn_prefix = "arn:${local.partition}:sagemaker:${var.region}:${local.account_id}"
  # Written out, not a `for` expression: checkov silently skips the IAM checks of a document whose
  # resources it cannot resolve.
  serving_arns = [
    "${local.sagemaker_arn_prefix}:model/*",
    "${local.sagemaker_arn_prefix}:endpoint-config/*",
    "${local.sagemaker_arn_prefix}:endpoint/*",
    "${local.sagemaker_arn_prefix}:transform-job/*",
  ]
  # Guarded rollouts (invoke deploy --update --canary/--linear): the CloudWatch alarms on the new
  # fleet, named by conf/deploy/default.yaml's deploy.rollout.alarm_prefix.
  rollout_alarms_arn = "arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:sagemaker-rollout-*"
  # The model registry (invoke register): package groups and their versions (model-package/<group>/<n>).
  registry_arns = [
    "${local.sagemaker_arn_prefix}:model-package-group/*",
    "${local.sagemaker_arn_prefix}:model-package/*",
  ]
  # What SageMaker may assume the execution role for: training jobs, and the models it serves.
  role_source_arns = [
    local.training_jobs_arn,
    "${local.sagemaker_arn_prefix}:model/*",
    "${local.sagemaker_arn_prefix}:endpoint/*",
    "${local.sagemaker_arn_prefix}:transform-job/*",
  ]
  serving_log_group_arns = [
    "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/Endpoints/*",
    "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:/aws/sagemaker/TransformJobs/*",
  ]
}
