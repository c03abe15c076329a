# Jobs that read FSx for Lustre or EFS (fsx:// and efs:// channels) run in an existing VPC (vpc_id,
# subnet_ids; off by default). Their security group admits the file systems' ports from itself:
# give the file system (or its mount targets) this group too. They reach S3 (data, code, output)
# through a gateway endpoint, made here unless the VPC has one. `invoke train` checks all of it
# before a launch (project/aws/vpc.py).

locals {
  in_vpc = length(var.subnet_ids) > 0
  # What the jobs' group admits from itself: the file systems' ports, and the job's own instances.
  file_system_ports = {
    lustre      = { protocol = "tcp", from = 988, to = 988 }
    lustre-data = { protocol = "tcp", from = 1018, to = 1023 }
    nfs         = { protocol = "tcp", from = 2049, to = 2049 }
  }
  ec2_arn_prefix = "arn:${local.partition}:ec2:${var.region}:${local.account_id}"
}

data "aws_subnet" "jobs" {
  for_each = toset(var.subnet_ids)

  id = each.value
}

resource "aws_security_group" "jobs" {
  #checkov:skip=CKV2_AWS_5:Attached outside Terraform: SageMaker gives it to each job's network interfaces (VpcConfig), the user to the file system.
  count = local.in_vpc ? 1 : 0

  name        = "${var.project}-jobs"
  description = "SageMaker training jobs of ${var.project} that read FSx for Lustre or EFS"
  vpc_id      = var.vpc_id

  lifecycle {
    precondition {
      condition     = var.vpc_id != null && alltrue([for subnet in data.aws_subnet.jobs : subnet.vpc_id == var.vpc_id])
      error_message = "subnet_ids must be subnets of vpc_id: set vpc_id to their VPC."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "file_systems" {
  for_each = local.in_vpc ? local.file_system_ports : {}

  security_group_id            = aws_security_group.jobs[0].id
  referenced_security_group_id = aws_security_group.jobs[0].id
  description                  = "${each.key} from the jobs and file systems of this group"
  ip_protocol                  = each.value.protocol
  from_port                    = each.value.from
  to_port                      = each.value.to
}

resource "aws_vpc_security_group_ingress_rule" "instances" {
  count = local.in_vpc ? 1 : 0

  security_group_id            = aws_security_group.jobs[0].id
  referenced_security_group_id = aws_security_group.jobs[0].id
  description                  = "distributed training between the instances of a job (torchrun, NCCL)"
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_egress_rule" "group" {
  count = local.in_vpc ? 1 : 0

  security_group_id            = aws_security_group.jobs[0].id
  referenced_security_group_id = aws_security_group.jobs[0].id
  description                  = "the file systems and the other instances of a job"
  ip_protocol                  = "-1"
}

resource "aws_vpc_security_group_egress_rule" "https" {
  count = local.in_vpc ? 1 : 0

  security_group_id = aws_security_group.jobs[0].id
  cidr_ipv4         = "0.0.0.0/0"
  description       = "S3 through the gateway endpoint, AWS APIs and package indexes through a NAT gateway"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

data "aws_route_tables" "jobs" {
  count = local.in_vpc && !var.vpc_has_s3_gateway_endpoint ? 1 : 0

  vpc_id = var.vpc_id
}

resource "aws_vpc_endpoint" "s3" {
  count = local.in_vpc && !var.vpc_has_s3_gateway_endpoint ? 1 : 0

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${var.region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = data.aws_route_tables.jobs[0].ids
}
