"""AWS clients for the workflow: one boto3 session, each client made on first use.

The endpoint is, in order: the explicit argument (`aws.endpoint_url`), the AWS_ENDPOINT_URL
variable, else real AWS. An explicit endpoint also reaches the clients the SageMaker SDK makes
from the session, so a job meant for a local endpoint never lands in a real account.

An AWS failure is worded for the user by project/aws/errors.py (`aws_errors`, `explain`).

boto3 is imported inside functions: importing this module costs nothing (`invoke --list`).
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

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
