# The role SageMaker training jobs run as: read data, read/write artifacts, pull the one image,
# write training logs and metrics. Nothing else.

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "SageMakerAssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }

    # Confused-deputy guard: SageMaker may assume the role only on behalf of this account.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "this" {
  name                 = local.role_name
  description          = "SageMaker training jobs of ${var.project}"
  assume_role_policy   = data.aws_iam_policy_document.assume_role.json
  max_session_duration = 3600
}

data "aws_iam_policy_document" "training" {
  statement {
    sid       = "ListDataBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.this["data"].arn]
  }

  statement {
    sid       = "ReadData"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.this["data"].arn}/*"]
  }

  statement {
    sid       = "ListArtifactsBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.this["artifacts"].arn]
  }

  statement {
    sid = "ReadWriteArtifacts"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this["artifacts"].arn}/*"]
  }

  statement {
    # GetAuthorizationToken has no resource-level permissions: "*" is the only valid resource.
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid = "PullTrainingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    sid = "WriteTrainingLogs"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = [
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${local.training_log_group}",
      # ":*" covers the group's log streams (one per job and host).
      "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${local.training_log_group}:*",
    ]
  }

  statement {
    # PutMetricData has no resource-level permissions; the namespace condition is the limit.
    sid       = "PutTrainingMetrics"
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"]

    condition {
      test     = "StringLike"
      variable = "cloudwatch:namespace"
      values   = [local.metric_namespace]
    }
  }

  dynamic "statement" {
    # SSE-KMS only: reading and writing encrypted objects needs the key.
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "this" {
  name   = "training"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.training.json
}
