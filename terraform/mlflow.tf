# logger=mlflow's tracking server (enable_mlflow, off by default: it bills while it runs). Its runs'
# artifacts (model.ts, plots) go to the artifacts bucket under mlflow/; the server works as the
# SageMaker execution role, which may write there (iam.tf, WriteMlflowArtifacts).
resource "aws_sagemaker_mlflow_tracking_server" "this" {
  count = var.enable_mlflow ? 1 : 0

  tracking_server_name         = var.project
  role_arn                     = aws_iam_role.this.arn
  artifact_store_uri           = "s3://${aws_s3_bucket.this["artifacts"].bucket}/${local.mlflow_prefix}/"
  tracking_server_size         = var.mlflow_server_size
  automatic_model_registration = false # invoke register keeps the model registry (SageMaker Model Registry)
}
