"""A/B variants through the real CLI against the sandbox (#29 §1): deploy run A, add run B with 10%
of the traffic, see about 10% of 400 requests reach B, pin requests with --variant, read each
variant's CloudWatch numbers in `invoke endpoints`, compare the variants on labelled images, shift
the weights, refuse bad input in one line, shift to 100% and retire A. Every request the tasks
sent is checked against botocore's service model as AWS checks it (tests/service_model.py).

The world (moto with Terraform's resources, hosting played, tiny run A) is tests/test_deploy.py's.
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path

import pytest

from project.aws.deploy_requests import DeployError
from project.aws.variant_requests import Accuracy, check_traffic, parse_weights, two_proportion_test, verdict
from project.core import config as C
from project.serving.predict import predict
from project.training.train import run_composed
from tests import aws_calls, cli
from tests.cli import one_error_line, refusal
from tests.service_model import problems
from tests.synthetic import make_glyphs, tiny_overrides, write_dataset
from tests.test_deploy import resources, world  # noqa: F401 (world: the module's fixture, shared)

invoke = functools.partial(cli.invoke, timeout=600)
REQUESTS = 400
SHARE = 0.10


def write_pngs(folder: Path, n: int, seed: int, by_class: bool) -> list[tuple[Path, int]]:
    """n synthetic digits as PNG files: in <folder>/<class>/ (by_class) or all in folder."""
    from PIL import Image

    images, labels = make_glyphs(n, seed)
    written = []
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        target = folder / str(label) if by_class else folder
        target.mkdir(parents=True, exist_ok=True)
        path = target / f"digit-{i:04d}.png"
        Image.fromarray(image).save(path)
        written.append((path, int(label)))
    return written


@pytest.fixture(scope="module")
def run_b(world, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """A second tiny run, trained differently (more data, another seed): B."""
    root = tmp_path_factory.mktemp("variant-b")
    files = write_dataset(root / "data", n_train=900, n_test=100, seed=7, make=make_glyphs)
    runs = world["run_dir"].parent
    overrides = tiny_overrides(root / "data", files, runs, **{"trainer.max_epochs": 2, "run_name": "tiny-b"})
    run_composed(C.compose([*overrides, "trainer.seed=7"]))
    return runs / "tiny-b"


def test_weights_traffic_and_the_test_are_checked():
    on = ["tiny", "tiny-b"]
    assert parse_weights(["tiny-b=50", "tiny=50"], on, "ab") == {"tiny-b": 50.0, "tiny": 50.0}
    assert parse_weights(["tiny_b=100", "tiny=0"], on, "ab") == {"tiny-b": 100.0, "tiny": 0.0}  # a run's name
    for pairs, message in {
        ("tiny=60", "tiny-b=30"): "the weights sum to 90 (tiny=60 + tiny-b=30): give percents that sum to 100",
        ("tiny=150",): "give VARIANT=PERCENT with a percent of 0-100",
        ("tiny=x",): "give VARIANT=PERCENT",
        ("other=100",): "endpoint ab has no variant other: its variants are tiny, tiny-b",
        ("tiny=50", "tiny=50"): "tiny is given twice",
    }.items():
        with pytest.raises(DeployError, match=re.escape(message)):
            parse_weights(list(pairs), on, "ab")
    for bad in ("0", "100", "-5", "ten", "12.5"):
        with pytest.raises(DeployError, match="give the new variant's share of the traffic as 1-99"):
            check_traffic(bad)
    assert check_traffic("10") == 10.0
    # Wilson's interval and the pooled two-proportion z-test, against values computed by hand.
    a, b = Accuracy("a", 90, 100), Accuracy("b", 70, 100)
    low, high = a.interval()
    assert math.isclose(low, 0.8256, abs_tol=1e-3) and math.isclose(high, 0.9448, abs_tol=1e-3)
    z, p = two_proportion_test(a, b)
    assert math.isclose(z, 3.5355, abs_tol=1e-3) and p < 0.001
    assert verdict(a, b).startswith("a is better: significant at 5% (two-proportion z-test")
    assert verdict(a, Accuracy("c", 88, 100)).startswith("no significant difference at 5%")


def _served_by(out: str) -> list[str]:
    return re.findall(r"\[variant (\S+)\]$", out, re.M)


def _weights(sm, endpoint: str) -> dict[str, float]:
    return {
        v["VariantName"]: v["CurrentWeight"] for v in sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
    }


@pytest.mark.slow
def test_a_b_variants_through_the_cli(world, run_b, tmp_path):  # noqa: F811
    sm, ovr = world["clients"].sagemaker, world["overrides"]
    record = Path(os.environ[aws_calls.RECORD_ENV])
    offset = record.stat().st_size if record.exists() else 0
    before = resources(sm)

    made = invoke("deploy", "tiny", "deploy.endpoint_name=ab", "--yes", *ovr)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    # Bad input, one line each, nothing created.
    deployed = resources(sm)
    cases = {
        ("deploy", "tiny-b", "deploy.endpoint_name=ab", "--traffic", "0", "--yes"): "--traffic 0: give the new",
        ("deploy", "tiny-b", "deploy.endpoint_name=ab", "--traffic", "100", "--yes"): "--traffic 100: give the new",
        ("deploy", "tiny-b", "deploy.endpoint_name=no-such", "--traffic", "10", "--yes"): "no endpoint no-such to add",
        ("deploy", "tiny", "deploy.endpoint_name=ab", "--traffic", "10", "--yes"): "endpoint ab already serves tiny",
        ("traffic", "no-such", "tiny=100"): "no endpoint no-such to shift traffic on",
    }
    for args, message in cases.items():
        assert message in refusal(*args, *ovr), args
    assert resources(sm) == deployed

    added = invoke("deploy", str(run_b), "deploy.endpoint_name=ab", "--traffic", "10", "--yes", *ovr)
    assert added.returncode == 0, added.stdout[-3000:] + added.stderr[-3000:]
    assert "add tiny-b (config " in added.stdout and "as variant tiny-b, 10%" in added.stdout
    assert (
        "endpoint ab: Updating" in added.stdout and "endpoint ab serves tiny-b with 10% of the traffic" in added.stdout
    )
    assert _weights(sm, "ab") == {"tiny": 90.0, "tiny-b": 10.0}
    config = sm.describe_endpoint_config(
        EndpointConfigName=sm.describe_endpoint(EndpointName="ab")["EndpointConfigName"]
    )
    assert [v["VariantName"] for v in config["ProductionVariants"]] == ["tiny", "tiny-b"]
    assert len([r for r in resources(sm) - before if r.startswith("config ")]) == 1  # the old config is gone

    # About 10% of 400 requests reach B: within 4 standard deviations of the binomial.
    many = tmp_path / "many"
    write_pngs(many, REQUESTS, seed=3, by_class=False)
    answered = invoke("predict", "--endpoint", "ab", str(many), *ovr)
    assert answered.returncode == 0, answered.stderr[-3000:]
    served = _served_by(answered.stdout)
    assert len(served) == REQUESTS and set(served) == {"tiny", "tiny-b"}
    to_b, sd = served.count("tiny-b"), math.sqrt(REQUESTS * SHARE * (1 - SHARE))
    assert abs(to_b - REQUESTS * SHARE) <= 4 * sd, to_b

    digits = Path(__file__).resolve().parent.parent / "examples" / "digits"
    pinned = invoke("predict", "--endpoint", "ab", "--variant", "tiny-b", str(digits), *ovr)
    assert pinned.returncode == 0, pinned.stderr
    assert _served_by(pinned.stdout) == ["tiny-b"] * 3
    local_b = invoke("predict", str(run_b), str(digits))
    assert [line.rsplit("  [", 1)[0] for line in pinned.stdout.splitlines()] == local_b.stdout.splitlines()
    assert "endpoint ab has no variant nope" in one_error_line(
        invoke("predict", "--endpoint", "ab", "--variant", "nope", str(digits), *ovr)
    )

    listed = invoke("endpoints", *ovr)
    assert listed.returncode == 0, listed.stderr
    rows = {
        m[0]: m
        for m in re.findall(
            r"^  variant (\S+)\s+run (\S+)\s+([\d.]+)% .*?(\d+) calls\s+(\d+) 4xx\s+(\d+) 5xx\s+(\S+) ms$",
            listed.stdout,
            re.M,
        )
    }
    assert set(rows) == {"tiny", "tiny-b"}, listed.stdout
    assert rows["tiny"][1] == "tiny" and rows["tiny-b"][1] == "tiny-b"
    assert (float(rows["tiny"][2]), float(rows["tiny-b"][2])) == (90.0, 10.0)
    assert int(rows["tiny-b"][3]) == to_b + 3 and int(rows["tiny"][3]) == REQUESTS - to_b
    assert int(rows["tiny"][4]) == int(rows["tiny"][5]) == 0 and float(rows["tiny"][6]) > 0

    labelled = tmp_path / "labelled"
    images = write_pngs(labelled, 40, seed=11, by_class=True)
    compared = invoke("compare", "--endpoint", "ab", str(labelled), *ovr)
    assert compared.returncode == 0, compared.stdout[-3000:] + compared.stderr[-3000:]
    for name, run in (("tiny", world["run_dir"]), ("tiny-b", run_b)):
        correct = sum(
            p.label == label for p, (_, label) in zip(predict(run, [i for i, _ in images]), images, strict=True)
        )
        assert re.search(rf"^{name}\s+{correct}/40\s+accuracy {correct / 40:.3f} \(95% CI ", compared.stdout, re.M), (
            compared.stdout
        )
    assert "two-proportion z-test" in compared.stdout

    for args, message in {
        ("traffic", "ab", "tiny=60", "tiny-b=30"): "the weights sum to 90 (tiny=60 + tiny-b=30)",
        ("traffic", "ab", "nope=100"): "endpoint ab has no variant nope: its variants are tiny, tiny-b",
        ("traffic", "ab", "tiny-b=100", "--retire", "nope"): "endpoint ab has no variant nope",
        ("traffic", "ab", "tiny-b=50", "tiny=50", "--retire", "tiny"): "--retire tiny but tiny=50",
    }.items():
        assert message in refusal(*args, *ovr), args
    shifted = invoke("traffic", "ab", "tiny-b=50", "tiny=50", *ovr)
    assert shifted.returncode == 0 and "endpoint ab: tiny 50%, tiny-b 50%" in shifted.stdout, shifted.stderr
    assert _weights(sm, "ab") == {"tiny": 50.0, "tiny-b": 50.0}

    retired = invoke("traffic", "ab", "tiny-b=100", "--retire", "tiny", *ovr)
    assert retired.returncode == 0, retired.stdout[-3000:] + retired.stderr[-3000:]
    assert "retired tiny" in retired.stdout and "endpoint ab: tiny-b 100%" in retired.stdout
    assert list(_weights(sm, "ab")) == ["tiny-b"]
    assert len([r for r in resources(sm) - before if r.startswith(("model ", "config "))]) == 2  # B's model, config
    after = invoke("predict", "--endpoint", "ab", str(digits), *ovr)
    assert after.returncode == 0 and after.stdout == local_b.stdout, after.stderr  # one variant: no tag
    assert invoke("undeploy", "ab", *ovr).returncode == 0
    assert resources(sm) == before

    # Valid on AWS: every request the tasks sent, by the service model's patterns and ranges too.
    calls = [c for c in aws_calls.read_calls(record, offset) if c.is_task]
    assert {"UpdateEndpointWeightsAndCapacities", "UpdateEndpoint", "InvokeEndpoint"} <= {c.operation for c in calls}
    invalid = [line for c in calls for line in problems(c.service, c.operation, c.params)]
    assert not invalid, invalid
