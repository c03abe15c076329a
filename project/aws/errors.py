"""AWS failures as one line for the user: what failed, on what, the likely cause and the fix.

`aws_errors` (a with-block) and `explain` turn botocore's and boto3's exceptions into an
`AwsError`: credentials, region and connection problems say how to set them up; a refusal names
the service, the operation, the resource, the error code and what to do about it.

botocore is imported inside functions: importing this module costs nothing (`invoke --list`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from project.aws.session import MAX_ATTEMPTS
from project.core.errors import UserError


class AwsError(UserError, RuntimeError):
    """AWS could not be used; the message is one line saying what to do."""


EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
REJECTED_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "InvalidAccessKeyId"}

# The calls this project makes: the service to name and the IAM action a refusal is about.
# (S3 authorises HeadObject as s3:GetObject and the multipart calls as s3:PutObject.)
OPERATIONS = {
    "HeadObject": ("S3", "s3:GetObject"),
    "GetObject": ("S3", "s3:GetObject"),
    "PutObject": ("S3", "s3:PutObject"),
    "CreateMultipartUpload": ("S3", "s3:PutObject"),
    "UploadPart": ("S3", "s3:PutObject"),
    "CompleteMultipartUpload": ("S3", "s3:PutObject"),
    "HeadBucket": ("S3", "s3:ListBucket"),
    "ListObjectsV2": ("S3", "s3:ListBucket"),
    "CreateTrainingJob": ("SageMaker", "sagemaker:CreateTrainingJob (and iam:PassRole on aws.role_arn)"),
    "DescribeTrainingJob": ("SageMaker", "sagemaker:DescribeTrainingJob"),
    "ListTrainingJobs": ("SageMaker", "sagemaker:ListTrainingJobs"),
    "StopTrainingJob": ("SageMaker", "sagemaker:StopTrainingJob"),
    "DescribeImages": ("ECR", "ecr:DescribeImages"),
    "GetAuthorizationToken": ("ECR", "ecr:GetAuthorizationToken"),
    "DescribeLogStreams": ("CloudWatch Logs", "logs:DescribeLogStreams"),
    "GetLogEvents": ("CloudWatch Logs", "logs:GetLogEvents"),
    "GetCallerIdentity": ("STS", "sts:GetCallerIdentity"),
    "GetProducts": ("Price List", "pricing:GetProducts"),
}
DENIED_CODES = {"AccessDenied", "AccessDeniedException", "403", "Forbidden", "UnauthorizedOperation"}
THROTTLED_CODES = {
    "ThrottlingException",
    "Throttling",
    "SlowDown",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "503",
}
KMS_HINT = (
    "the bucket's KMS key refuses these credentials (or is disabled): the role needs kms:Decrypt and "
    "kms:GenerateDataKey on that key; check the key policy and that the key is enabled"
)
# Error code -> the likely cause and what to do, for every code that is not a refusal or throttling.
HINTS = {
    "NoSuchBucket": "the bucket does not exist in this account: run `terraform apply` in terraform/ or fix "
    "aws.data_bucket / aws.artifacts_bucket",
    "NoSuchKey": "no such object: check the S3 path (`aws s3 ls`) and that the upload or job that writes it finished",
    "404": "no such object or bucket: check the S3 path (`aws s3 ls`)",
    "NotFound": "no such object or bucket: check the S3 path (`aws s3 ls`)",
    "InvalidBucketName": "not a valid bucket name: fix aws.data_bucket / aws.artifacts_bucket",
    "ValidationException": "AWS rejected a value in the request: fix the config value the message names",
    "ResourceLimitExceeded": "an account quota is reached: stop jobs you no longer need, or request a higher "
    "quota in the Service Quotas console (SageMaker, '<instance type> for training job usage')",
    "ServiceQuotaExceededException": "an account quota is reached: request a higher quota in Service Quotas",
    "RepositoryNotFoundException": "the ECR repository does not exist: run `terraform apply` in terraform/ or fix "
    "aws.repository_url",
    "RequestTimeTooSkewed": "this machine's clock is off: sync it (NTP) and run it again",
    "InternalError": "AWS had an internal error: run it again in a minute",
    "ServiceUnavailable": "the service is unavailable right now: run it again in a minute",
}
DEFAULT_HINT = "check the resource name and that these credentials may use it"


def _refusal_hint(code: str, message: str, service: str, action: str | None) -> str:
    if code.startswith("KMS") or (code in DENIED_CODES and "kms" in message.lower()):
        return KMS_HINT
    if code in DENIED_CODES:
        policy, check = (
            ("a bucket policy", "the bucket policy") if service == "S3" else ("an IAM policy", "the role's policies")
        )
        needs = f"lacks {action} there" if action else "lacks the permission"
        return (
            f"the credentials' account or role {needs}, or {policy} denies it; "
            f"check `aws sts get-caller-identity` and {check}"
        )
    if code in THROTTLED_CODES:
        return f"AWS is throttling these requests (tried {MAX_ATTEMPTS} times): wait a minute and run it again"
    return HINTS.get(code, DEFAULT_HINT)


def refusal(exc: Any, resource: str | None = None) -> AwsError:
    """The one line for a ClientError: the operation, the resource, the code, the cause and the fix."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code") or "?"), " ".join(str(error.get("Message") or "").split())
    operation = str(getattr(exc, "operation_name", "") or "request")
    service, action = OPERATIONS.get(operation, ("AWS", None))
    where = f" on {resource}" if resource else ""
    detail = f" ({message[:300]})" if message and message != code else ""
    return AwsError(
        f"{service} {operation}{where} refused: {code}{detail}: {_refusal_hint(code, message, service, action)}"
    )


def _wrapped_client_error(exc: BaseException) -> tuple[Any, str | None] | None:
    """boto3's S3UploadFailedError / S3TransferFailedError around a ClientError: (it, the s3:// URI named)."""
    from boto3.exceptions import S3TransferFailedError, S3UploadFailedError
    from botocore.exceptions import ClientError

    if not isinstance(exc, (S3UploadFailedError, S3TransferFailedError)):
        return None
    inner = exc.__cause__ or exc.__context__
    if not isinstance(inner, ClientError):
        return None  # e.g. retries exhausted on a dropped connection: not a refusal
    # boto3's text: "Failed to upload <file> to <bucket>/<key>: An error occurred (<code>) ..."
    named = re.search(r" to (\S+?/\S+): An error occurred", str(exc))
    return inner, f"s3://{named.group(1)}" if named else None


def explain(exc: BaseException, endpoint_url: str | None = None, resource: str | None = None) -> AwsError | None:
    """The AwsError (one line) for an AWS failure; None for anything that is not one.

    Credentials, region and connection problems say how to set them up; any other ClientError
    (or boto3's transfer error wrapping one) names the operation, `resource`, the code and its
    likely cause.
    """
    from botocore import exceptions as bx

    where = endpoint_url or "AWS"
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return AwsError("no AWS credentials found: run `aws configure` or set AWS_PROFILE")
    if isinstance(exc, bx.ProfileNotFound):
        return AwsError(f"{exc}: check AWS_PROFILE against `aws configure list-profiles`")
    if isinstance(exc, bx.NoRegionError):
        return AwsError("no AWS region configured: set aws.region=<region> or AWS_DEFAULT_REGION")
    if isinstance(exc, (bx.TokenRetrievalError, bx.SSOTokenLoadError)):
        return AwsError(f"AWS SSO login expired ({exc}): run `aws sso login`")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return AwsError(f"cannot reach AWS endpoint {getattr(exc, 'kwargs', {}).get('endpoint_url', where)}: {exc}")
    wrapped = _wrapped_client_error(exc)
    if wrapped is not None:
        exc, resource = wrapped[0], wrapped[1] or resource
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in EXPIRED_CODES:
            return AwsError("AWS credentials have expired: refresh them (`aws sso login`, or new keys) and retry")
        if code in REJECTED_CODES:
            return AwsError(f"AWS rejected the credentials ({code}): check AWS_PROFILE / `aws configure`")
        return refusal(exc, resource)
    return None


@contextmanager
def aws_errors(endpoint_url: str | None = None, resource: str | None = None) -> Iterator[None]:
    """Turn AWS failures inside the block into AwsError: one line, naming `resource` if given.

    Code that handles a particular error itself (a 404 meaning "not there yet") catches it
    inside the block, so only what it re-raises is reworded here.
    """
    try:
        yield
    except Exception as exc:
        problem = explain(exc, endpoint_url, resource)
        if problem is None:
            raise
        raise problem from None
