"""SageMaker's Service Quotas, served by the sandbox endpoint (moto serves the VPC's only).

Every instance type of the catalog (conf/instance/) has its three training quotas, named as AWS
names them, with a code per quota and a generous default (SANDBOX_DEFAULT instances): launches in
the sandbox pass, as in an account whose quotas were raised. Tests in the endpoint's process set
other values (`set_quota`) or refuse the caller (`deny_quotas`), then run the real CLI against it:
ListServiceQuotas, ListAWSDefaultServiceQuotas and GetServiceQuota answer over HTTP, paged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from project.sandbox.patches import Patches

SERVICE_CODE = "sagemaker"
SANDBOX_DEFAULT = 100  # instances per type and usage: more than the tests' InProgress jobs of one type
PAGE_SIZE = 20  # when MaxResults is not given (AWS picks its own): small, so clients must page
USAGE_NAMES = (
    "{type} for training job usage",
    "{type} for spot training job usage",
    "{type} for training warm pool usage",
)

_applied: dict[str, float] = {}  # quota name -> the value set by set_quota
_denied: list[bool] = []  # non-empty while deny_quotas() is entered


def quota_code(name: str) -> str:
    """A stable code of AWS's form (L- and 8 hex digits) for a quota name."""
    return "L-" + hashlib.sha256(name.encode()).hexdigest()[:8].upper()


def catalog_quotas(region: str, account: str) -> list[dict[str, Any]]:
    from project.core.config import known_instance_types

    quotas = []
    for instance_type in known_instance_types():
        for template in USAGE_NAMES:
            name = template.format(type=instance_type)
            code = quota_code(name)
            quotas.append(
                {
                    "ServiceCode": SERVICE_CODE,
                    "ServiceName": "Amazon SageMaker",
                    "QuotaArn": f"arn:aws:servicequotas:{region}:{account}:{SERVICE_CODE}/{code}",
                    "QuotaCode": code,
                    "QuotaName": name,
                    "Value": float(_applied.get(name, SANDBOX_DEFAULT)),
                    "Unit": "None",
                    "Adjustable": True,
                    "GlobalQuota": False,
                }
            )
    return quotas


@contextmanager
def set_quota(name: str, value: float) -> Iterator[None]:
    """The quota `name` is `value` while the block runs."""
    _applied[name] = value
    try:
        yield
    finally:
        _applied.pop(name, None)


@contextmanager
def deny_quotas() -> Iterator[None]:
    """Every Service Quotas call is refused (AccessDeniedException) while the block runs."""
    _denied.append(True)
    try:
        yield
    finally:
        _denied.pop()


class SageMakerQuotas:
    """While entered, moto's Service Quotas also answers for SageMaker (see the module docstring)."""

    def __init__(self) -> None:
        self._patches = Patches()

    def __enter__(self) -> SageMakerQuotas:
        from moto.servicequotas.responses import ServiceQuotasResponse

        list_defaults = ServiceQuotasResponse.list_aws_default_service_quotas
        get_quota = ServiceQuotasResponse.get_service_quota
        self._patches.set(ServiceQuotasResponse, "list_service_quotas", lambda r: _list(r, None))
        self._patches.set(ServiceQuotasResponse, "list_aws_default_service_quotas", lambda r: _list(r, list_defaults))
        self._patches.set(ServiceQuotasResponse, "get_service_quota", lambda r: _get(r, get_quota))
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._patches.restore()


def _refuse_if_denied() -> None:
    from moto.core.exceptions import JsonRESTError

    if _denied:
        raise JsonRESTError(
            "AccessDeniedException", "User is not authorized to perform: servicequotas:ListServiceQuotas"
        )


def _list(response: Any, original: Any) -> Any:
    _refuse_if_denied()
    params = json.loads(response.body or "{}")
    if params.get("ServiceCode") != SERVICE_CODE:
        if original is None:  # ListServiceQuotas of another service: none applied
            return json.dumps({"Quotas": []})
        return original(response)
    quotas = catalog_quotas(response.region, response.current_account)
    start = int(params.get("NextToken") or 0)
    end = start + int(params.get("MaxResults") or PAGE_SIZE)
    page: dict[str, Any] = {"Quotas": quotas[start:end]}
    if end < len(quotas):
        page["NextToken"] = str(end)
    return json.dumps(page)


def _get(response: Any, original: Any) -> Any:
    from moto.servicequotas.exceptions import NoSuchResource

    _refuse_if_denied()
    params = json.loads(response.body or "{}")
    if params.get("ServiceCode") != SERVICE_CODE:
        return original(response)
    for quota in catalog_quotas(response.region, response.current_account):
        if quota["QuotaCode"] == params.get("QuotaCode"):
            return json.dumps({"Quota": quota})
    raise NoSuchResource()
