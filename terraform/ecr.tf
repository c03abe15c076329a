resource "aws_ecr_repository" "this" {
  name = local.repository_name
  # A tag names exactly one image: a job's image URI always means the same bits.
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = var.kms_key_arn == null ? "AES256" : "KMS"
    kms_key         = var.kms_key_arn
  }
}

data "aws_ecr_lifecycle_policy_document" "this" {
  rule {
    priority    = 1
    description = "Expire untagged images (failed or superseded pushes)"

    selection {
      tag_status   = "untagged"
      count_type   = "sinceImagePushed"
      count_unit   = "days"
      count_number = var.untagged_image_expiry_days
    }

    action {
      type = "expire"
    }
  }

  rule {
    # A rule for tag status "any" must come last (the highest priority number).
    priority    = 2
    description = "Keep the ${var.image_retention_count} most recent images"

    selection {
      tag_status   = "any"
      count_type   = "imageCountMoreThan"
      count_number = var.image_retention_count
    }

    action {
      type = "expire"
    }
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  repository = aws_ecr_repository.this.name
  policy     = data.aws_ecr_lifecycle_policy_document.this.json
}
