variable "region" {
  description = "AWS region for every resource; SageMaker training jobs run here."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "project" {
  description = "Prefix of every resource name; bucket names add the account ID and region."
  type        = string
  default     = "lightning-sagemaker"

  validation {
    # 24 characters keep "<project>-artifacts-<account>-<region>" within S3's 63.
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.project))
    error_message = "project must be 3-24 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags for every resource (merged over project and managed-by)."
  type        = map(string)
  default     = {}

  validation {
    # Tag keys are case-sensitive: `Project` beside `project` would split the cost report.
    condition     = alltrue([for key in keys(var.tags) : !contains(["project", "managed-by"], lower(key)) || contains(["project", "managed-by"], key)])
    error_message = "tags: spell the keys project and managed-by in lowercase, as the default tags and the job tags do."
  }
}

variable "dataset_prefix" {
  description = "Key prefix of the data bucket that holds datasets; every conf/dataset/*.yaml s3_prefix lies under it. Jobs read and the launcher writes only there."
  type        = string
  default     = "datasets"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)*$", var.dataset_prefix))
    error_message = "dataset_prefix must be a key prefix without leading or trailing slash, such as datasets."
  }
}

variable "create_launcher_policy" {
  description = "Create the launcher policy (output launcher_policy_json) as a customer-managed IAM policy, to attach to a user, group or CI role."
  type        = bool
  default     = false
}

variable "data_bucket_name" {
  description = "Name of the data bucket; null derives <project>-data-<account>-<region>."
  type        = string
  default     = null
}

variable "artifacts_bucket_name" {
  description = "Name of the artifacts bucket (model output, checkpoints, code); null derives <project>-artifacts-<account>-<region>."
  type        = string
  default     = null
}

variable "repository_name" {
  description = "Name of the ECR repository for the training image; null uses project."
  type        = string
  default     = null
}

variable "role_name" {
  description = "Name of the SageMaker execution role; null derives <project>-sagemaker-<region>."
  type        = string
  default     = null
}

variable "kms_key_arn" {
  description = "ARN of a customer-managed KMS key for SSE-KMS on the buckets and the repository; null uses SSE-S3 (AES256)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN (arn:aws:kms:...)."
  }
}

variable "image_retention_count" {
  description = "Number of most recent images the ECR lifecycle policy keeps."
  type        = number
  default     = 30

  validation {
    condition     = var.image_retention_count >= 1 && floor(var.image_retention_count) == var.image_retention_count
    error_message = "image_retention_count must be a whole number of at least 1."
  }
}

variable "untagged_image_expiry_days" {
  description = "Days after which untagged images (left behind by failed pushes) are expired."
  type        = number
  default     = 7

  validation {
    condition     = var.untagged_image_expiry_days >= 1 && floor(var.untagged_image_expiry_days) == var.untagged_image_expiry_days
    error_message = "untagged_image_expiry_days must be a whole number of at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which overwritten or deleted object versions are removed from both buckets."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "code_retention_days" {
  description = "Days after which the code bundles staged under code/ in the artifacts bucket expire. Keep it above the longest job (28 days at most): a spot job downloads its bundle again when it restarts."
  type        = number
  default     = 30

  validation {
    condition     = var.code_retention_days >= 1 && floor(var.code_retention_days) == var.code_retention_days
    error_message = "code_retention_days must be a whole number of at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which unfinished multipart uploads are aborted and their parts deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && floor(var.abort_incomplete_multipart_upload_days) == var.abort_incomplete_multipart_upload_days
    error_message = "abort_incomplete_multipart_upload_days must be a whole number of at least 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete non-empty buckets and a repository with images (tests, throwaway accounts)."
  type        = bool
  default     = false
}

variable "enable_mlflow" {
  description = "Create a SageMaker managed MLflow tracking server for logger=mlflow runs (output mlflow_tracking_server_arn). It bills every hour it runs, used or not (SageMaker pricing, MLflow), until `terraform apply -var enable_mlflow=false` removes it."
  type        = bool
  default     = false
}

variable "mlflow_server_size" {
  description = "Size of the MLflow tracking server when enable_mlflow is true: Small, Medium or Large (larger bills more)."
  type        = string
  default     = "Small"

  validation {
    condition     = contains(["Small", "Medium", "Large"], var.mlflow_server_size)
    error_message = "mlflow_server_size must be Small, Medium or Large."
  }
}

variable "vpc_id" {
  description = "ID of an existing VPC that jobs with a file-system channel (fsx:// or efs://) run in; null, with subnet_ids empty, keeps jobs out of any VPC."
  type        = string
  default     = null

  validation {
    condition     = var.vpc_id == null || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID such as vpc-0123456789abcdef0, or null."
  }
}

variable "subnet_ids" {
  description = "IDs of existing subnets of vpc_id that jobs run in (output subnets): those of the file system's availability zone. Empty: no VPC (the default)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for id in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", id))])
    error_message = "subnet_ids must be subnet IDs such as subnet-0123456789abcdef0."
  }
}

variable "vpc_has_s3_gateway_endpoint" {
  description = "Whether vpc_id already routes to S3 through a gateway endpoint (or a NAT gateway); false creates an S3 gateway endpoint on the VPC's route tables."
  type        = bool
  default     = false
}
