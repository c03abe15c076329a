"""A model served the way SageMaker's PyTorch inference image serves it: `GET /ping`, `POST /invocations`.

    python -m project.sandbox.model_server <model_dir> [--port N]

model_dir is an unpacked model.tar.gz: model.ts at the top, the handler in code/inference.py.
As in the image, code/ goes on sys.path, the handler's model_fn runs once, and each request goes
through input_fn -> predict_fn -> output_fn with its Content-Type and Accept. A handler error with
a 4xx `status_code` (the toolkit's error class) is answered with that code and its message; any
other is a 500 with one line, never a traceback. The first line on stdout is `port N` once the
model is loaded. The sandbox runs one of these per deployed model (serving.py); the
handler's imports (torch) stay in this process, not the sandbox's.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_ACCEPT = "application/json"  # the toolkit's SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT
MAX_BODY = 6 * 1024 * 1024  # InvokeEndpoint's payload limit: 6 MB


class Handler:
    """The handler module's four functions around one loaded model."""

    def __init__(self, model_dir: Path) -> None:
        sys.path.insert(0, str(model_dir / "code"))
        self.module = importlib.import_module("inference")
        self.model = self.module.model_fn(str(model_dir))

    def __call__(self, body: bytes, content_type: str, accept: str) -> str:
        data = self.module.input_fn(body, content_type)
        return self.module.output_fn(self.module.predict_fn(data, self.model), accept)


def answer(handler: Handler, body: bytes, content_type: str, accept: str) -> tuple[int, str, str]:
    """(status, content type, body) for one invocation."""
    try:
        return 200, accept if accept != "*/*" else DEFAULT_ACCEPT, handler(body, content_type, accept)
    except Exception as exc:  # noqa: BLE001 - every failure is an answer, as the image gives one
        status = getattr(exc, "status_code", 500)
        message = str(getattr(exc, "message", "") or exc) or type(exc).__name__
        if not isinstance(status, int) or not 400 <= status < 600:
            status = 500
        if status >= 500:
            message = f"{type(exc).__name__}: {message}"
        return status, "text/plain", message.splitlines()[0]


def make_server(handler: Handler, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    class Requests(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One send per answer, at once: with the head and the body written apart, Nagle's algorithm
        # held the body until the client's delayed ACK (~40 ms a request on Linux).
        disable_nagle_algorithm = True
        wbufsize = -1  # buffered; http.server flushes after each request

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request would drown the sandbox's log

        def _send(self, status: int, content_type: str, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/ping":
                self._send(200, "text/plain", "")
            else:
                self._send(404, "text/plain", f"no such path {self.path}: GET /ping, POST /invocations")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/invocations":
                self.rfile.read(length)
                self._send(404, "text/plain", f"no such path {self.path}: POST /invocations")
                return
            if length > MAX_BODY:
                self.rfile.read(length)
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "text/plain", f"body over {MAX_BODY} bytes")
                return
            body = self.rfile.read(length)
            accept = self.headers.get("Accept") or DEFAULT_ACCEPT
            self._send(*answer(handler, body, self.headers.get("Content-Type") or "", accept))

    return ThreadingHTTPServer((host, port), Requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = make_server(Handler(args.model_dir.resolve()), port=args.port)
    print(f"port {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
