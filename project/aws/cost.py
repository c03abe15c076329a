"""What a training job costs: the estimate before a launch and the bill after it (pure).

One model for both: SageMaker bills instance seconds, and MaxRuntime caps the seconds billed,
on-demand or managed spot alike. A spot job's MaxWait (runtime plus time spent waiting for
capacity) bounds how long it may take, not what it costs: the waiting is not billed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import CONF_DIR

SECONDS_PER_HOUR = 3600


@dataclass(frozen=True)
class Cost:
    price_per_hour: float  # on-demand USD per instance-hour
    instances: int
    max_hours: float  # MaxRuntime: the most that can be billed per instance
    on_demand_usd: float
    spot_usd: float  # the on-demand bound less the typical spot saving
    spot_discount: float
    max_wait_hours: float | None = None  # spot: MaxWait, the wall-clock bound including waiting

    def line(self, spot: bool) -> str:
        text = (
            f"${self.price_per_hour:.3f}/h x {self.instances} instance(s) x {self.max_hours:.2f} h max = "
            f"${self.on_demand_usd:.2f} on-demand at most"
        )
        if not spot:
            return text + f" (spot would be about ${self.spot_usd:.2f})"
        saving = self.on_demand_usd - self.spot_usd
        waits = f"; waits up to {self.max_wait_hours:.2f} h for capacity, unbilled" if self.max_wait_hours else ""
        return (
            text + f"; managed spot about ${self.spot_usd:.2f} "
            f"(saves ~${saving:.2f}, {self.spot_discount:.0%} typical{waits})"
        )


def estimate(
    price_per_hour: float,
    instances: int,
    max_run_seconds: float,
    spot_discount: float,
    max_wait_seconds: float | None = None,
) -> Cost:
    """The most a job can cost: every instance billed for the whole MaxRuntime."""
    hours = max_run_seconds / SECONDS_PER_HOUR
    on_demand = price_per_hour * instances * hours
    wait_hours = max_wait_seconds / SECONDS_PER_HOUR if max_wait_seconds else None
    return Cost(price_per_hour, instances, hours, on_demand, on_demand * (1 - spot_discount), spot_discount, wait_hours)


def instance_price(instance_type: str) -> float | None:
    """On-demand USD/hour from the instance catalog in conf/instance/."""
    import yaml

    path = CONF_DIR / "instance" / f"{instance_type}.yaml"
    return float(yaml.safe_load(path.read_text())["price_per_hour"]) if path.is_file() else None


def job_cost(desc: dict[str, Any]) -> float | None:
    """What a described job was billed: billable seconds (spot savings already in them) x price."""
    resources = desc.get("ResourceConfig", {})
    price = instance_price(str(resources.get("InstanceType", "")))
    billable = desc.get("BillableTimeInSeconds")
    if price is None or billable is None:
        return None
    # SageMaker reports BillableTimeInSeconds summed over instances.
    return price * float(billable) / SECONDS_PER_HOUR
