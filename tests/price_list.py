"""The AWS Price List API's GetProducts over HTTP, from a fixture of products (moto has no `pricing`).

`PriceListServer(products)` answers GetProducts as the API does: the ServiceCode and every filter
applied (TERM_MATCH/EQUALS: the attribute equals the value; CONTAINS: holds it), each product as
a JSON string in PriceList, PAGE_SIZE products a page with a NextToken. `refuse` makes it answer
AccessDeniedException; `throttle=n` answers the first n requests with ThrottlingException.
Point AWS_ENDPOINT_URL at `url` and the real boto3 `pricing` client talks to it.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "price_list_sagemaker.json"
PAGE_SIZE = 3  # small, so the client must follow NextToken
TARGET = "AWSPriceListService.GetProducts"


def fixture_products() -> list[dict[str, Any]]:
    return json.loads(FIXTURE.read_text())["products"]


def matches(product: dict[str, Any], service_code: str, filters: list[dict[str, str]]) -> bool:
    if product.get("serviceCode") != service_code:
        return False
    attributes = product["product"]["attributes"]
    for rule in filters:
        actual = str(attributes.get(rule["Field"], ""))
        if rule["Type"] in ("TERM_MATCH", "EQUALS") and actual != rule["Value"]:
            return False
        if rule["Type"] == "CONTAINS" and rule["Value"] not in actual:
            return False
    return True


class PriceListServer:
    def __init__(self, products: list[dict[str, Any]], refuse: bool = False, throttle: int = 0) -> None:
        self.products, self.refuse, self.throttle = products, refuse, throttle
        self.requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PriceListServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, target: str, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.requests.append(request)
        if len(self.requests) <= self.throttle:
            return 400, {"__type": "ThrottlingException", "Message": "Rate exceeded"}
        if self.refuse:
            return 400, {"__type": "AccessDeniedException", "Message": "not authorized to perform pricing:GetProducts"}
        if target != TARGET:
            return 400, {"__type": "InvalidParameterException", "Message": f"{target} is not served here"}
        found = [p for p in self.products if matches(p, request["ServiceCode"], request.get("Filters", []))]
        start = int(request.get("NextToken") or 0)
        page: dict[str, Any] = {
            "FormatVersion": "aws_v1",
            "PriceList": [json.dumps(p) for p in found[start : start + PAGE_SIZE]],
        }
        if start + PAGE_SIZE < len(found):
            page["NextToken"] = str(start + PAGE_SIZE)
        return 200, page

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status, payload = server.answer(self.headers.get("X-Amz-Target", ""), json.loads(body or b"{}"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.1")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
