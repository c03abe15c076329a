"""What a training job costs: the estimate before a launch and the bill after it (pure).

One model for both: SageMaker bills instance seconds, and MaxRuntime caps the seconds billed,
on-demand or managed spot alike. A spot job's MaxWait (runtime plus time spent waiting for
capacity) bounds how long it may take, not what it costs: the waiting is not billed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from project.core.config import CONF_DIR
from project.core.errors import UserError

SECONDS_PER_HOUR = 3600
STALE_PRICE_DAYS = 90  # older catalog prices are flagged in the summary: AWS changes GPU prices a few times a year


class BudgetError(UserError):
    """The worst case exceeds job.max_cost_usd; nothing was launched."""


@dataclass(frozen=True)
class Cost:
    price_per_hour: float  # on-demand USD per instance-hour
    instances: int
    max_hours: float  # MaxRuntime: the most that can be billed per instance
    on_demand_usd: float
    spot_usd: float  # the on-demand bound less the typical spot saving
    spot_discount: float
    max_wait_hours: float | None = None  # spot: MaxWait, the wall-clock bound including waiting
    warm_pool_hours: float = 0.0  # KeepAlivePeriod: the instances stay billed this long after the job

    @property
    def warm_pool_usd(self) -> float:
        return self.price_per_hour * self.instances * self.warm_pool_hours

    @property
    def worst_case_usd(self) -> float:
        """The most the job can be billed: every instance for all of MaxRuntime, then the warm pool."""
        return self.on_demand_usd + self.warm_pool_usd

    def line(self, spot: bool) -> str:
        text = (
            f"${self.price_per_hour:.3f}/h x {self.instances} instance(s) x {self.max_hours:.2f} h max = "
            f"${self.on_demand_usd:.2f} on-demand at most"
        )
        if self.warm_pool_hours:
            text += (
                f", + ${self.warm_pool_usd:.2f} warm pool ({self.warm_pool_hours:.2f} h) = ${self.worst_case_usd:.2f}"
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
    keep_alive_seconds: float = 0,
) -> Cost:
    """The most a job can cost: every instance billed for the whole MaxRuntime (and its warm pool)."""
    hours = max_run_seconds / SECONDS_PER_HOUR
    on_demand = price_per_hour * instances * hours
    wait_hours = max_wait_seconds / SECONDS_PER_HOUR if max_wait_seconds else None
    return Cost(
        price_per_hour,
        instances,
        hours,
        on_demand,
        on_demand * (1 - spot_discount),
        spot_discount,
        wait_hours,
        keep_alive_seconds / SECONDS_PER_HOUR,
    )


def check_budget(worst_case_usd: float, max_cost_usd: float | None, what: str = "this job") -> None:
    """Refuse when the worst case exceeds the budget (None: no budget). A sweep passes the sum over its jobs."""
    if max_cost_usd is not None and worst_case_usd > max_cost_usd:
        raise BudgetError(
            f"{what} can cost up to ${worst_case_usd:.2f}, over job.max_cost_usd=${max_cost_usd:.2f}: "
            "lower job.max_run_minutes, instance.count or job.keep_alive_minutes, pick a cheaper instance, "
            "or raise job.max_cost_usd"
        )


def budget_line(worst_case_usd: float, max_cost_usd: float | None) -> str:
    if max_cost_usd is None:
        return f"worst case ${worst_case_usd:.2f}; no budget (job.max_cost_usd)"
    return f"worst case ${worst_case_usd:.2f} of job.max_cost_usd=${max_cost_usd:.2f}"


def price_age_note(price_date: str | None, price_region: str, job_region: str, today: date | None = None) -> str:
    """What the summary says about the catalog price: stale, never read from AWS, or another region's."""
    notes = []
    if price_date is None:
        notes.append("price not read from AWS: `invoke prices` refreshes it")
    else:
        age = ((today or date.today()) - date.fromisoformat(price_date)).days
        if age > STALE_PRICE_DAYS:
            notes.append(f"price of {price_date}, {age} days old: `invoke prices` refreshes it")
    if price_region != job_region:
        notes.append(f"price is {price_region}'s, the job runs in {job_region}: `invoke prices` reads that region's")
    return "; ".join(notes)


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
    # BillableTimeInSeconds is one instance's (the wall clock, less a spot saving): SageMaker bills it
    # on each instance of the cluster (botocore's service model: "BillableTimeInSeconds * InstanceCount").
    return price * float(billable) * int(resources.get("InstanceCount", 1)) / SECONDS_PER_HOUR
