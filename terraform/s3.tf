# The data and artifacts buckets share every setting, so one set of resources covers both.

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_18:Server access logs need a third bucket per account; CloudTrail S3 data events are the recommended audit trail.
  #checkov:skip=CKV_AWS_144:Cross-region replication doubles storage cost for re-creatable training data and artifacts; versioning guards against deletion.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; training jobs are started by the CLI, not by uploads.
  for_each = local.buckets

  bucket        = each.value
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_public_access_block" "this" {
  for_each = aws_s3_bucket.this

  bucket                  = each.value.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    # ACLs off: access is decided by IAM and the bucket policy alone.
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # S3 Bucket Keys cut KMS request costs; ignored for SSE-S3.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_versioning" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
  }

  rule {
    # An object deleted in a versioned bucket leaves a delete marker; once the versions beneath it
    # have expired, the marker alone would stay (and be listed) forever.
    id     = "remove-expired-delete-markers"
    status = "Enabled"

    filter {}

    expiration {
      expired_object_delete_marker = true
    }
  }

  dynamic "rule" {
    # Each launch stages a fresh code bundle; old ones are never read again once their job is over.
    for_each = each.key == "artifacts" ? [local.code_prefix] : []

    content {
      id     = "expire-staged-code"
      status = "Enabled"

      filter {
        prefix = "${rule.value}/"
      }

      expiration {
        days = var.code_retention_days
      }
    }
  }

  dynamic "rule" {
    # Short-lived objects on the artifacts bucket, none read again after a day: dry runs' staged
    # code (the dry-run prefix), and an async endpoint's requests, answers and refusals
    # (async/<endpoint>/...), which `invoke predict` reads as soon as each is written. Versions
    # included; S3 applies the shortest expiration of the rules that match an object.
    for_each = each.key == "artifacts" ? {
      "expire-dry-run-code"   = local.dry_run_prefix
      "expire-async-requests" = local.async_prefix
    } : {}

    content {
      id     = rule.key
      status = "Enabled"

      filter {
        prefix = "${rule.value}/"
      }

      expiration {
        days = 1
      }

      noncurrent_version_expiration {
        noncurrent_days = 1
      }
    }
  }

  # A lifecycle rule on a versioned bucket must follow the versioning configuration.
  depends_on = [aws_s3_bucket_versioning.this]
}

data "aws_iam_policy_document" "bucket" {
  for_each = aws_s3_bucket.this

  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      each.value.arn,
      "${each.value.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "this" {
  for_each = aws_s3_bucket.this

  bucket = each.value.id
  policy = data.aws_iam_policy_document.bucket[each.key].json

  # S3 rejects a policy while the public access block is still being written.
  depends_on = [aws_s3_bucket_public_access_block.this]
}
