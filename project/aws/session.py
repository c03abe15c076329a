# Over 300 lines: two concerns (clients; AWS errors worded for users), the next split (#27 §6).
"""AWS clients for the workflow: one boto3 session, each client made on first use.

The endpoint is, in order: the explicit argument (`aws.endpoint_url`), the AWS_ENDPOINT_URL
variable, else real AWS. An explicit endpoint also reaches the clients the SageMaker SDK makes
from the session, so a job meant for a local endpoint never lands in a real account.

boto3 is imported inside functions: importing this module costs nothing (`invoke --list`).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from project.core.errors import UserError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
# Adaptive retry mode: standard's backoff on throttling and dropped connections, plus a client-side
# rate limit that slows down once AWS throttles (status polls, log tails, quota look-ups); 5 attempts in all.
RETRY_MODE = "adaptive"
MAX_ATTEMPTS = 5


def _remember_retry_cause(
    request_dict: Any = None, response: Any = None, caught_exception: Any = None, **_: Any
) -> None:
    """needs-retry: keep why this attempt failed, for the line the next attempt prints."""
    if request_dict is None:
        return
    error = (response[1].get("Error", {}).get("Code") if response else None) or type(caught_exception).__name__
    request_dict["context"]["last_failure"] = error


def retry_config(max_attempts: int) -> Any:
    """Adaptive retries, `max_attempts` attempts in all (botocore's `max_attempts` counts retries only)."""
    from botocore.config import Config

    return Config(retries={"mode": RETRY_MODE, "total_max_attempts": max_attempts})


def _say_retry(echo: Any, max_attempts: int) -> Any:
    def on_request_created(request: Any = None, operation_name: str = "", **_: Any) -> None:
        """request-created: botocore builds a new request for each attempt; say so from the second on."""
        context = getattr(request, "context", None) or {}
        attempt = context.get("retries", {}).get("attempt", 1)
        if attempt > 1:
            cause = context.get("last_failure", "?")
            echo(f"retrying {operation_name} (attempt {attempt} of {max_attempts}) after {cause}")

    return on_request_created


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class AwsError(UserError, RuntimeError):
    """AWS could not be used; the message is one line saying what to do."""


LOCALSTACK = "localstack"


def resolve_endpoint(endpoint_url: str | None, environ=os.environ) -> str | None:
    """The endpoint URL to use, or None for real AWS.

    `localstack` (as aws.endpoint_url or AWS_ENDPOINT_URL) is LocalStack's edge endpoint as
    localstack-client finds it: http://localhost:4566, or LOCALSTACK_HOST where that is set.
    """
    endpoint = endpoint_url or environ.get(ENDPOINT_ENV) or None
    if endpoint == LOCALSTACK:
        # localstack-client's own parsing and default edge port; not its get_service_endpoint(),
        # which returns $AWS_ENDPOINT_URL itself when that is set (here: the word "localstack").
        from localstack_client.config import DEFAULT_EDGE_PORT, parse_localstack_host

        host, port = parse_localstack_host(environ.get("LOCALSTACK_HOST") or f"localhost:{DEFAULT_EDGE_PORT}")
        endpoint = f"{'https' if environ.get('USE_SSL') in ('1', 'true') else 'http'}://{host}:{port}"
    return endpoint


def _session(region: str | None, endpoint_url: str | None):
    import boto3

    if endpoint_url is None:
        return boto3.Session(region_name=region)

    class EndpointSession(boto3.session.Session):
        """Every client and resource of this session talks to `endpoint_url`."""

        def client(self, *args, **kwargs):
            if len(args) < 6 and kwargs.get("endpoint_url") is None:  # 6th positional is endpoint_url
                kwargs["endpoint_url"] = endpoint_url
            return super().client(*args, **kwargs)

        def resource(self, *args, **kwargs):
            if len(args) < 6 and kwargs.get("endpoint_url") is None:
                kwargs["endpoint_url"] = endpoint_url
            return super().resource(*args, **kwargs)

    return EndpointSession(region_name=region)


@dataclass
class AwsClients:
    """boto3 clients sharing one session; `session` is what the SageMaker SDK is given."""

    region: str | None
    endpoint_url: str | None
    max_attempts: int = MAX_ATTEMPTS
    echo_retry: Any = field(default=_stderr, repr=False)  # one line per retried request
    _session: Any = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    # boto3 sessions are not thread-safe; clients are, once made.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                self._session = _session(self.region, self.endpoint_url)
                # On the session: the SageMaker SDK's clients from this session retry and say it too.
                self._session._session.set_default_client_config(retry_config(self.max_attempts))
                events = self._session._session.get_component("event_emitter")
                events.register("needs-retry", _remember_retry_cause)
                events.register("request-created", _say_retry(self.echo_retry, self.max_attempts))
            return self._session

    def client(self, service: str):
        session = self.session  # its default client config retries (retry_config)
        with self._lock:
            if service not in self._clients:
                self._clients[service] = session.client(service)
            return self._clients[service]

    @property
    def s3(self):
        return self.client("s3")

    @property
    def sagemaker(self):
        return self.client("sagemaker")

    @property
    def ecr(self):
        return self.client("ecr")

    @property
    def logs(self):
        return self.client("logs")


def aws_clients(region: str | None, endpoint_url: str | None, max_attempts: int = MAX_ATTEMPTS) -> AwsClients:
    """Clients for `region` (None: the profile's) at the resolved endpoint; nothing is called yet."""
    return AwsClients(region=region, endpoint_url=resolve_endpoint(endpoint_url), max_attempts=max_attempts)


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
