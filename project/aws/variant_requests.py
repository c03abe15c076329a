"""Production variants, pure: a variant's name, the checks of `--traffic` and of `invoke traffic`'s
weights, the endpoint config that holds several variants, and the accuracy statistics of
`invoke compare --endpoint`. Plain values in, plain values out.

A variant is named after its run (safe_name: letters, digits and single hyphens, at most 63, which
is SageMaker's VariantName pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from project.aws.deploy_requests import DeployError, safe_name, tag_list

WEIGHT_TOTAL = 100.0  # `invoke traffic` weights are percentages; SageMaker takes any non-negative floats
Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def variant_name(run: str) -> str:
    return safe_name(run)


def check_traffic(percent: str | int) -> float:
    """`--traffic N`: the new variant's share, 1-99 percent, as a weight of WEIGHT_TOTAL."""
    if not str(percent).isdigit() or not 1 <= int(percent) <= 99:
        raise DeployError(f"--traffic {percent}: give the new variant's share of the traffic as 1-99 (percent)")
    return float(percent)


def split_weights(tokens: list[str]) -> tuple[list[str], list[str]]:
    """`invoke traffic`'s bare tokens: (VARIANT=PERCENT pairs, Hydra overrides). A variant's name has
    no dot; an override's key has one (aws.region=...) or a +/~ prefix."""
    pairs = [t for t in tokens if "." not in t.partition("=")[0] and not t.startswith(("+", "~"))]
    return pairs, [t for t in tokens if t not in pairs]


def parse_weights(pairs: list[str], on_endpoint: list[str], endpoint: str) -> dict[str, float]:
    """`VARIANT=PERCENT ...` -> {variant: weight}: each a variant of the endpoint, 0-100, summing to 100."""
    if not pairs:
        raise DeployError(f"give the weights, e.g. `invoke traffic {endpoint} B=50 A=50` (percent, summing to 100)")
    weights: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or not 0 <= weight <= WEIGHT_TOTAL or math.isnan(weight):
            raise DeployError(f"{pair!r}: give VARIANT=PERCENT with a percent of 0-100, e.g. {on_endpoint[0]}=50")
        variant = check_variant(name, on_endpoint, endpoint)
        if variant in weights:
            raise DeployError(f"{variant} is given twice: give each variant's weight once")
        weights[variant] = weight
    total = sum(weights.values())
    if abs(total - WEIGHT_TOTAL) > 1e-6:
        shown = " + ".join(f"{v}={w:g}" for v, w in weights.items())
        raise DeployError(f"the weights sum to {total:g} ({shown}): give percents that sum to 100")
    return weights


def check_variant(name: str, on_endpoint: list[str], endpoint: str) -> str:
    """A variant of the endpoint, named as given or by its run's name (sanitized as deploy names it)."""
    for candidate in (name, safe_name(name) if name.strip("-_. ") else name):
        if candidate in on_endpoint:
            return candidate
    raise DeployError(f"endpoint {endpoint} has no variant {name}: its variants are {', '.join(on_endpoint)}")


def variants_config_request(name: str, variants: list[dict[str, Any]], tags: dict[str, str]) -> dict[str, Any]:
    """An endpoint config of these ProductionVariants (as DescribeEndpointConfig gives them, or new)."""
    keys = (
        "VariantName",
        "ModelName",
        "InstanceType",
        "InitialInstanceCount",
        "InitialVariantWeight",
        "ServerlessConfig",
    )
    kept = [{k: v[k] for k in keys if k in v} for v in variants]
    return {"EndpointConfigName": name, "ProductionVariants": kept, "Tags": tag_list(tags)}


# --- accuracy per variant ------------------------------------------------------------------------


@dataclass(frozen=True)
class Accuracy:
    variant: str
    correct: int
    total: int

    @property
    def rate(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def interval(self) -> tuple[float, float]:
        """Wilson's 95% score interval (sound near 0 and 1, where the normal approximation is not)."""
        n, p, z = self.total, self.rate, Z_95
        if not n:
            return 0.0, 1.0
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return max(0.0, centre - half), min(1.0, centre + half)

    def line(self) -> str:
        low, high = self.interval()
        return (
            f"{self.variant:<40} {self.correct:>5}/{self.total:<5} accuracy {self.rate:.3f} "
            f"(95% CI {low:.3f}-{high:.3f}, Wilson)"
        )


def two_proportion_test(a: Accuracy, b: Accuracy) -> tuple[float, float]:
    """The pooled two-proportion z-test of a.rate == b.rate: (z, two-sided p)."""
    pooled = (a.correct + b.correct) / (a.total + b.total) if a.total + b.total else 0.0
    se = math.sqrt(pooled * (1 - pooled) * (1 / max(a.total, 1) + 1 / max(b.total, 1)))
    if se == 0:
        return 0.0, 1.0
    z = (a.rate - b.rate) / se
    return z, math.erfc(abs(z) / math.sqrt(2))


def verdict(a: Accuracy, b: Accuracy, alpha: float = 0.05) -> str:
    z, p = two_proportion_test(a, b)
    better = a if a.rate > b.rate else b
    if p < alpha:
        return f"{better.variant} is better: significant at 5% (two-proportion z-test, z={z:.2f}, p={p:.4f})"
    return f"no significant difference at 5% (two-proportion z-test, z={z:.2f}, p={p:.4f})"
