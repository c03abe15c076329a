"""AWS clients for the workflow: one boto3 session, each client made on first use.

The endpoint is, in order: the explicit argument (`aws.endpoint_url`), the AWS_ENDPOINT_URL
variable, else real AWS. An explicit endpoint also reaches the clients the SageMaker SDK makes
from the session, so a job meant for a local endpoint never lands in a real account.

boto3 is imported inside functions: importing this module costs nothing (`invoke --list`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
# Standard retry mode backs off on throttling and dropped connections; 5 attempts ride them out.
MAX_ATTEMPTS = 5


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
    _session: Any = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    # boto3 sessions are not thread-safe; clients are, once made.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                self._session = _session(self.region, self.endpoint_url)
            return self._session

    def client(self, service: str):
        from botocore.config import Config

        session = self.session
        with self._lock:
            if service not in self._clients:
                self._clients[service] = session.client(
                    service, config=Config(retries={"mode": "standard", "max_attempts": self.max_attempts})
                )
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

    @property
    def sts(self):
        return self.client("sts")


def aws_clients(region: str | None, endpoint_url: str | None, max_attempts: int = MAX_ATTEMPTS) -> AwsClients:
    """Clients for `region` (None: the profile's) at the resolved endpoint; nothing is called yet."""
    return AwsClients(region=region, endpoint_url=resolve_endpoint(endpoint_url), max_attempts=max_attempts)


EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired", "TokenRefreshRequired"}
REJECTED_CODES = {"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException", "InvalidAccessKeyId"}


def explain(exc: BaseException, endpoint_url: str | None = None) -> AwsError | None:
    """The AwsError for a credentials, region or connection failure; None for anything else."""
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
    if isinstance(exc, bx.ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in EXPIRED_CODES:
            return AwsError("AWS credentials have expired: refresh them (`aws sso login`, or new keys) and retry")
        if code in REJECTED_CODES:
            return AwsError(f"AWS rejected the credentials ({code}): check AWS_PROFILE / `aws configure`")
    return None


@contextmanager
def aws_errors(endpoint_url: str | None = None) -> Iterator[None]:
    """Turn credential, region and connection failures inside the block into AwsError."""
    try:
        yield
    except Exception as exc:
        problem = explain(exc, endpoint_url)
        if problem is None:
            raise
        raise problem from None


def check_credentials(clients: AwsClients) -> dict[str, str]:
    """Ask STS who we are: the cheapest call that proves credentials, region and endpoint work."""
    with aws_errors(clients.endpoint_url):
        identity = clients.sts.get_caller_identity()
    return {"account": identity["Account"], "arn": identity["Arn"]}
