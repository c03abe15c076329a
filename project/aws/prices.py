"""`invoke prices`: the catalog's on-demand training prices (conf/instance/*.yaml) from the AWS Price List API.

One GetProducts query per region, paged: SageMaker's products whose usage type is on-demand
training (`<region prefix>-Train:<instance type>`, e.g. USE1-Train:ml.g5.xlarge). Most SageMaker
price-list rows leave the instance-type attribute empty; the usage type always names it. Each
catalog file gets its price, region, the date it was read and where from; the rest of the file
(specs, comments) stays as it was.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from project.core.atomic import write_atomically
from project.core.errors import UserError

SERVICE_CODE = "AmazonSageMaker"
# The Price List API answers only in a few regions (us-east-1, eu-central-1, ap-south-1), for all regions.
PRICING_REGION = "us-east-1"
TRAINING_USAGE = re.compile(r"^[A-Z0-9]+-Train:(ml\.[a-z0-9-]+\.[a-z0-9]+)$")  # on-demand; spot is billed apart
PRICE_KEYS = ("price_per_hour", "price_region", "price_date", "price_source")


class PriceError(UserError):
    """Prices could not be refreshed; the catalog is unchanged."""


@dataclass(frozen=True)
class ListedPrice:
    instance_type: str
    usd_per_hour: float
    usage_type: str
    sku: str
    publication_date: str


def training_filters(region: str) -> list[dict[str, str]]:
    return [
        {"Type": "TERM_MATCH", "Field": "regionCode", "Value": region},
        {"Type": "CONTAINS", "Field": "usagetype", "Value": "-Train:ml."},
    ]


def parse_product(text: str) -> ListedPrice | None:
    """One PriceList entry (a JSON string) as an on-demand training price, or None if it is not one."""
    item = json.loads(text)
    product = item.get("product", {})
    usage = product.get("attributes", {}).get("usagetype", "")
    match = TRAINING_USAGE.match(usage)
    if not match:
        return None
    for term in item.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                return ListedPrice(
                    match.group(1), float(usd), usage, product.get("sku", "?"), item.get("publicationDate", "?")
                )
    return None


def listed_prices(pricing: Any, region: str) -> dict[str, ListedPrice]:
    """Instance type -> its on-demand training price in `region`, from every page of GetProducts."""
    prices: dict[str, ListedPrice] = {}
    pages = pricing.get_paginator("get_products").paginate(
        ServiceCode=SERVICE_CODE, Filters=training_filters(region), FormatVersion="aws_v1"
    )
    for page in pages:
        for text in page.get("PriceList", []):
            listed = parse_product(text)
            if listed is not None:
                prices[listed.instance_type] = listed
    return prices


def _value(value: Any) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, str) else repr(value)


def rewrite_price(text: str, values: dict[str, Any]) -> str:
    """The YAML text with its price keys set to `values`; comments after a value are kept, missing keys appended."""
    for key, value in values.items():
        line = re.compile(rf"^{key}:[^#\n]*(#.*)?$", re.M)
        found = line.search(text)
        if found:
            comment = f"  {found.group(1)}" if found.group(1) else ""
            text = text[: found.start()] + f"{key}: {_value(value)}{comment}" + text[found.end() :]
        else:
            text = text.rstrip("\n") + f"\n{key}: {_value(value)}\n"
    return text


def refresh_catalog(
    catalog: Path, prices: dict[str, ListedPrice], region: str, today: date, echo: Callable[[str], None] = print
) -> list[str]:
    """Write each listed price into its catalog file; return the types the price list lacks."""
    import yaml

    missing = []
    for path in sorted(catalog.glob("*.yaml")):
        instance_type = str(yaml.safe_load(path.read_text()).get("type", path.stem))
        listed = prices.get(instance_type)
        if listed is None:
            missing.append(instance_type)
            continue
        source = (
            f"AWS Price List API: {SERVICE_CODE} {listed.usage_type} on-demand, "
            f"sku {listed.sku}, published {listed.publication_date}"
        )
        old = path.read_text()
        values = dict(zip(PRICE_KEYS, (listed.usd_per_hour, region, today.isoformat(), source), strict=True))
        write_atomically(path, rewrite_price(old, values))
        before = yaml.safe_load(old).get("price_per_hour")
        echo(f"{instance_type}: ${before}/h -> ${listed.usd_per_hour}/h ({region}, {today.isoformat()})")
    return missing


def refresh(
    pricing: Any, catalog: Path, region: str, today: date | None = None, echo: Callable[[str], None] = print
) -> None:
    """`invoke prices`: read the region's training prices, then rewrite the catalog (nothing if none are listed)."""
    prices = listed_prices(pricing, region)
    if not prices:
        raise PriceError(
            f"the Price List API lists no SageMaker training prices for region {region!r}: check the region name"
        )
    missing = refresh_catalog(catalog, prices, region, today or date.today(), echo)
    for instance_type in missing:
        echo(f"warning: {instance_type} has no on-demand training price in {region}; its file is unchanged")
