output "data_bucket" {
  description = "Name of the S3 bucket holding training data (read-only to training jobs)."
  value       = aws_s3_bucket.this["data"].bucket
}

output "artifacts_bucket" {
  description = "Name of the S3 bucket for model output, checkpoints and code uploads."
  value       = aws_s3_bucket.this["artifacts"].bucket
}

output "repository_url" {
  description = "URL of the ECR repository for the training image, without a tag."
  value       = aws_ecr_repository.this.repository_url
}

output "role_arn" {
  description = "ARN of the IAM role SageMaker training jobs run as."
  value       = aws_iam_role.this.arn
}

output "region" {
  description = "AWS region every resource lives in."
  value       = var.region
}

output "launcher_policy_json" {
  description = "IAM policy JSON for whoever launches jobs (a person or CI); attach it as terraform/README.md shows."
  value       = data.aws_iam_policy_document.launcher.json
}

output "launcher_policy_arn" {
  description = "ARN of the launcher policy when create_launcher_policy is true, else null."
  value       = one(aws_iam_policy.launcher[*].arn)
}

output "mlflow_tracking_server_arn" {
  description = "ARN of the SageMaker managed MLflow tracking server when enable_mlflow is true, else null: `invoke train` logs logger=mlflow jobs to it."
  value       = one(aws_sagemaker_mlflow_tracking_server.this[*].arn)
}

output "subnets" {
  description = "Subnets jobs with a file-system channel run in (subnet_ids); empty without a VPC. `invoke train` reads it unless aws.subnets is set."
  value       = var.subnet_ids
}

output "security_groups" {
  description = "The jobs' security group (admits Lustre 988 and 1018-1023 and NFS 2049 from itself) when subnet_ids is set, else empty. `invoke train` reads it unless aws.security_groups is set."
  value       = aws_security_group.jobs[*].id
}
