"""A loopback stand-in for a SageMaker managed MLflow tracking server's front door: it lets through,
to a real `mlflow server`, only requests signed as the sagemaker-mlflow plugin signs them (SigV4 for
the service `sagemaker-mlflow`, the tracking server's ARN in its routing header), and refuses the
rest with 403, as the real endpoint does. The plugin is pointed at it with its own setting,
SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT. The signature is recomputed with botocore from the test's
credentials, so a request signed with other keys, for another service or region, or altered on the
way, is refused."""

from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARN_HEADER = "x-mlflow-sm-tracking-server-arn"  # the plugin's routing header for a tracking server
AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[a-z0-9-]+)"
    r"/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


@contextmanager
def sigv4_proxy(upstream: str, arn: str, access_key: str, secret_key: str) -> Iterator[tuple[str, list[str]]]:
    """(the proxy's URL, the paths it let through) while the block runs."""
    passed: list[str] = []
    region = arn.split(":")[3]

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet: the test reads `passed`
            pass

        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            problem = _problem(self.command, self.path, dict(self.headers), body, arn, region, access_key, secret_key)
            if problem:
                self._answer(403, {"Content-Type": "text/plain"}, problem.encode())
                return
            request = urllib.request.Request(upstream + self.path, data=body or None, method=self.command)
            for name in ("Content-Type", "Accept"):
                if self.headers.get(name):
                    request.add_header(name, self.headers[name])
            try:
                with urllib.request.urlopen(request, timeout=60) as answer:
                    status, headers, content = answer.status, dict(answer.headers), answer.read()
            except urllib.error.HTTPError as refused:
                status, headers, content = refused.code, dict(refused.headers), refused.read()
            passed.append(self.path.split("?", 1)[0])
            self._answer(status, {"Content-Type": headers.get("Content-Type", "application/json")}, content)

        def _answer(self, status: int, headers: dict[str, str], content: bytes) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", passed
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _problem(
    method: str, path: str, headers: dict[str, str], body: bytes, arn: str, region: str, key: str, secret: str
) -> str | None:
    """Why this request would not pass SageMaker's front door; None if it would."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lower = {k.lower(): v for k, v in headers.items()}
    if lower.get(ARN_HEADER) != arn:
        return f"no {ARN_HEADER}: {arn}"
    match = AUTHORIZATION.match(lower.get("authorization", ""))
    if not match:
        return f"not SigV4-signed: {lower.get('authorization')!r}"
    if (match["key"], match["region"], match["service"]) != (key, region, "sagemaker-mlflow"):
        return f"signed by {match['key']} for {match['service']} in {match['region']}"
    # The same request signed again with the same keys at the same time: the signatures must agree.
    signed = {name: lower[name] for name in match["signed"].split(";") if name in lower}
    again = AWSRequest(method=method, url=f"http://{lower['host']}{path}", data=body, headers=signed)
    again.context["timestamp"] = lower.get("x-amz-date", "")
    auth = SigV4Auth(Credentials(key, secret), "sagemaker-mlflow", region)
    auth._modify_request_before_signing = lambda request: None  # keep the received headers as they are
    expected = auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)
    return None if expected == match["signature"] else "the signature does not match the request"
