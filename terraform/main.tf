provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = var.project, ManagedBy = "terraform" }, var.tags)
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

  # SageMaker writes training job logs and metrics under these fixed names.
  training_log_group = "/aws/sagemaker/TrainingJobs"
  metric_namespace   = "/aws/sagemaker/*"
}
