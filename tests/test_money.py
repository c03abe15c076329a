"""Before money is spent: the catalog, the budget, stale prices, bf16 and GPU memory against the
instance, price-list parsing, capacity messages. Pure functions on composed configs, plain asserts.
"""

import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
import yaml

from project.aws import cost, fit, monitor, prices
from project.aws import plan as jobs
from project.aws.session import aws_clients
from project.core.config import CONF_DIR, known_instance_types
from tests.price_list import fixture_products
from tests.test_jobs import INFRA, plan

NEW_FAMILIES = ("ml.g5.", "ml.g6.", "ml.g6e.", "ml.p4d.", "ml.p4de.", "ml.p5.")


def test_catalog_has_the_current_training_gpus_with_their_specs(composed):
    types = known_instance_types()
    assert all(any(t.startswith(f) for t in types) for f in NEW_FAMILIES)
    assert {"ml.p3.2xlarge", "ml.p3.8xlarge", "ml.p3.16xlarge", "ml.g4dn.xlarge", "ml.g4dn.12xlarge"} <= set(types)
    for instance_type in types:
        inst = composed(f"instance={instance_type}").instance
        assert inst.type == instance_type and inst.price_per_hour > 0
        assert (inst.gpu_compute_capability is None) == (inst.gpus == 0), instance_type
    specs = {
        t: (i.gpus, i.gpu_model, i.gpu_memory_gib, i.gpu_compute_capability, i.vcpus, i.memory_gib)
        for t in ("ml.p4de.24xlarge", "ml.p5.48xlarge", "ml.g6e.xlarge", "ml.g6.12xlarge", "ml.p3.8xlarge")
        for i in [composed(f"instance={t}").instance]
    }
    assert specs == {
        "ml.p4de.24xlarge": (8, "A100", 80, 8.0, 96, 1152),
        "ml.p5.48xlarge": (8, "H100", 80, 9.0, 192, 2048),
        "ml.g6e.xlarge": (1, "L40S", 48, 8.9, 4, 32),
        "ml.g6.12xlarge": (4, "L4", 24, 8.9, 48, 192),
        "ml.p3.8xlarge": (4, "V100", 16, 7.0, 32, 244),
    }


def test_worst_case_adds_the_warm_pool_and_the_summary_shows_the_budget():
    p, cfg = plan("instance=ml.g5.xlarge", "job.max_run_minutes=60", "job.keep_alive_minutes=30", "job.max_cost_usd=5")
    jobs.validate_plan(p, cfg)
    assert p.cost.worst_case_usd == pytest.approx(1.408 * 1.5)
    assert "+ $0.70 warm pool (0.50 h) = $2.11" in p.summary()
    assert "worst case $2.11 of job.max_cost_usd=$5.00" in p.summary()


def test_a_launch_over_budget_is_refused_with_both_figures():
    p, cfg = plan("instance=ml.p3.8xlarge", "trainer.gpus=4", "job.max_cost_usd=20")
    with pytest.raises(cost.BudgetError) as refused:
        jobs.validate_plan(p, cfg)
    assert "this job can cost up to $29.38, over job.max_cost_usd=$20.00" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_budget_must_be_positive(composed):
    from project.core.config import ConfigError

    with pytest.raises(ConfigError, match="job.max_cost_usd must be a positive number"):
        composed("job.max_cost_usd=0")


def test_a_sweep_checks_its_summed_worst_case():
    plans = [plan("instance=ml.g5.xlarge", f"trainer.seed={seed}")[0] for seed in range(3)]
    total = sum(p.cost.worst_case_usd for p in plans)  # 3 x $2.816
    cost.check_budget(total, 10.0, "this sweep of 3 jobs")
    with pytest.raises(cost.BudgetError, match=r"this sweep of 3 jobs can cost up to \$8\.45, over .*\$8\.00"):
        cost.check_budget(total, 8.0, "this sweep of 3 jobs")


def test_a_sweeps_confirmation_shows_the_worst_case_with_warm_pools_and_the_budget():
    from project.aws import sweep

    plans = [plan("instance=ml.g5.xlarge", "job.max_cost_usd=10", f"trainer.seed={s}")[0] for s in range(2)]
    plans.append(plan("instance=ml.g5.xlarge", "job.max_cost_usd=10", "job.keep_alive_minutes=30")[0])
    assert sweep.launch_cost(plans) == pytest.approx(1.408 * 2 * 3 + 1.408 * 0.5)  # $9.15
    assert sweep.cost_line(plans) == (
        "  budget: for the 3 job(s) to launch, worst case $9.15 of job.max_cost_usd=$10.00 "
        "(each billed for its whole max runtime, plus its warm pool)"
    )
    with pytest.raises(cost.BudgetError, match=r"this sweep of 4 jobs can cost up to \$11\.97"):
        sweep.parallel_limit(None, [*plans, plans[0]], ctx=None)
    # An Optuna sweep hands its trials in batches: a later batch counts the jobs launched before.
    with pytest.raises(cost.BudgetError, match=r"this sweep of 4 jobs can cost up to \$11\.97"):
        sweep.parallel_limit(None, [plans[0]], ctx=None, earlier=plans)
    assert sweep.cost_line(plans[:1], earlier=plans[1:2]).startswith(
        "  budget: for the 1 job(s) to launch and the 1 launched before, worst case $5.63 of"
    )


@pytest.mark.parametrize(
    "price_date,expected",
    [
        ("2020-01-31", "price of 2020-01-31, 2131 days old: `invoke prices` refreshes it"),
        ("2025-10-01", ""),
        (None, "price not read from AWS: `invoke prices` refreshes it"),
    ],
)
def test_a_stale_price_is_shown_as_such(price_date, expected):
    assert cost.price_age_note(price_date, "us-east-1", "us-east-1", today=date(2025, 12, 1)) == expected


def test_the_summary_flags_an_old_price_and_another_regions_price():
    p, _ = plan("instance=ml.g5.xlarge", "instance.price_date=2020-01-31", "instance.price_region=eu-west-1")
    row = next(line for line in p.summary().splitlines() if line.strip().startswith("price "))
    assert "price of 2020-01-31" in row and "days old" in row and "eu-west-1's, the job runs in us-east-1" in row


@pytest.mark.parametrize("instance", ["ml.p3.2xlarge", "ml.g4dn.xlarge"])
def test_bf16_is_refused_before_ampere(instance):
    p, cfg = plan(f"instance={instance}", "trainer.precision=bf16-mixed", "trainer.batch_size=64")
    with pytest.raises(fit.InstanceFitError, match="use trainer.precision=16-mixed"):
        jobs.validate_plan(p, cfg)


def test_bf16_is_fine_on_ampere_and_16_mixed_everywhere():
    for overrides in (("instance=ml.g5.xlarge", "trainer.precision=bf16-mixed"), ("trainer.precision=16-mixed",)):
        p, cfg = plan(*overrides, "trainer.batch_size=64")
        jobs.validate_plan(p, cfg)


def test_gpu_memory_estimate_refuses_clearly_over_and_warns_close(composed):
    big = ["model.net.width=512", "trainer.batch_size=4096"]
    cfg = composed(*big)
    estimate = fit.estimate_memory(cfg, 4096)
    assert estimate is not None and estimate.parameters > 60_000_000 and 38 < estimate.gib < 45
    warnings: list[str] = []
    with pytest.raises(fit.InstanceFitError, match=r"the model needs ~4\d\.\d GiB per GPU .* 16 GiB T4"):
        fit.check_memory(estimate, composed(instance="ml.g4dn.xlarge").instance, 1, warnings.append)
    fit.check_memory(estimate, composed(instance="ml.g6e.xlarge").instance, 1, warnings.append)  # 48 GiB
    fit.check_memory(estimate, composed(instance="ml.p4de.24xlarge").instance, 8, warnings.append)  # 80 GiB
    assert len(warnings) == 1 and "close to the limit" in warnings[0] and "L40S" in warnings[0]
    small = composed()
    fit.check_memory(fit.estimate_memory(small, 256), composed(instance="ml.g4dn.xlarge").instance, 1, warnings.append)
    assert len(warnings) == 1


def test_half_precision_halves_the_activation_bytes(composed):
    full = fit.estimate_memory(composed("trainer.precision=32-true"), 1024)
    half = fit.estimate_memory(composed("trainer.precision=16-mixed"), 1024)
    assert full and half and full.activation_bytes_per_element == 4 and half.activation_bytes_per_element == 2
    assert half.gib < full.gib


def test_repository_arn_of_ecr_images():
    assert fit.repository_arn(f"{INFRA.repository_url}:abc1234") == "arn:aws:ecr:us-east-1:123456789012:repository/proj"
    dlc = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5.1-gpu-py311"
    assert fit.repository_arn(dlc) == "arn:aws:ecr:eu-west-1:763104351884:repository/pytorch-training"
    assert fit.repository_arn("docker.io/library/python:3.11") is None


def test_price_list_products_parse_to_on_demand_training_prices():
    parsed = [prices.parse_product(__import__("json").dumps(p)) for p in fixture_products()]
    training = {(p.instance_type, p.usd_per_hour) for p in parsed if p is not None}
    assert ("ml.g5.xlarge", 1.408) in training and ("ml.p5.48xlarge", 63.3) in training
    assert len(training) == 6  # hosting and notebook rows are not training prices


def test_rewriting_prices_keeps_the_file_readable_and_its_comments(tmp_path):
    original = (CONF_DIR / "instance" / "ml.g5.xlarge.yaml").read_text()
    values = {"price_per_hour": 1.5, "price_region": "us-west-2", "price_date": "2026-12-03", "price_source": 'a "b"'}
    text = prices.rewrite_price(original, values)
    assert yaml.safe_load(text) == {**yaml.safe_load(original), **values}
    assert "price_per_hour: 1.5  # USD per instance-hour, on-demand training" in text
    assert text.splitlines()[:10] == original.splitlines()[:10]


def test_capacity_messages_are_said_once():
    seen: set = set()
    desc = {
        "SecondaryStatusTransitions": [
            {"Status": "Starting", "StartTime": 1, "StatusMessage": "Preparing the instances for training"},
            {"Status": "Starting", "StartTime": 2, "StatusMessage": "Insufficient capacity error from EC2, retrying!"},
        ]
    }
    assert monitor.capacity_messages(desc, seen) == ["Starting: Insufficient capacity error from EC2, retrying!"]
    assert monitor.capacity_messages(desc, seen) == []


class PolicySimulator(BaseHTTPRequestHandler):
    """IAM's SimulatePrincipalPolicy (query protocol, XML) allowing only ALLOWED (moto cannot simulate)."""

    ALLOWED: set[str] = set()

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        actions = [v[0] for k, v in sorted(form.items()) if k.startswith("ActionNames.member.")]
        members = "".join(
            f"<member><EvalActionName>{a}</EvalActionName><EvalResourceName>{form['ResourceArns.member.1'][0]}"
            f"</EvalResourceName><EvalDecision>{'allowed' if a in self.ALLOWED else 'implicitDeny'}</EvalDecision>"
            "<MatchedStatements/><MissingContextValues/></member>"
            for a in actions
        )
        body = (
            '<SimulatePrincipalPolicyResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/">'
            f"<SimulatePrincipalPolicyResult><IsTruncated>false</IsTruncated><EvaluationResults>{members}"
            "</EvaluationResults></SimulatePrincipalPolicyResult>"
            "<ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></SimulatePrincipalPolicyResponse>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def policy_simulator(monkeypatch):
    """AWS clients whose IAM is PolicySimulator, served over HTTP on a free port."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    server = ThreadingHTTPServer(("127.0.0.1", 0), PolicySimulator)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield aws_clients("us-east-1", f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_a_role_that_may_not_pull_the_image_is_refused(policy_simulator):
    iam = policy_simulator.client("iam")
    image = f"{INFRA.repository_url}:abc1234"
    PolicySimulator.ALLOWED = set(fit.PULL_ACTIONS)
    fit.check_image_pull(iam, INFRA.role_arn, image)
    PolicySimulator.ALLOWED = {"ecr:BatchGetImage"}
    with pytest.raises(fit.InstanceFitError) as refused:
        fit.check_image_pull(iam, INFRA.role_arn, image)
    assert (
        f"the execution role {INFRA.role_arn} may not pull {image} "
        "(ecr:GetDownloadUrlForLayer, ecr:BatchCheckLayerAvailability denied)"
    ) in str(refused.value)


def test_batch_predict_refuses_an_s3_input_the_role_may_not_read(policy_simulator):
    """The transform job reads as the execution role: IAM's simulator (served here) decides first."""
    from types import SimpleNamespace

    from project.aws import batch, deploy_requests

    ctx = SimpleNamespace(clients=policy_simulator, infra=INFRA)
    PolicySimulator.ALLOWED = {"s3:GetObject"}
    batch.check_role_reads(ctx, "other-bucket", "photos/a.png", "s3://other-bucket/photos/")
    PolicySimulator.ALLOWED = set()
    with pytest.raises(deploy_requests.DeployError) as refused:
        batch.check_role_reads(ctx, "other-bucket", "photos/a.png", "s3://other-bucket/photos/")
    assert f"the execution role {INFRA.role_arn} may not read s3://other-bucket/photos/ (s3:GetObject denied)" in str(
        refused.value
    )


def test_a_network_that_cannot_take_the_datas_samples_is_one_line_before_launch(composed):
    from project.training.modules import ModuleError, sample_pass

    net, sizes = sample_pass(composed(model="mlp"))  # 784 inputs: MNIST's 1x28x28
    assert sum(p.numel() for p in net.parameters()) > 0 and sizes[-1] == 10
    with pytest.raises(
        ModuleError, match=r"model.net=project.training.models.MLP cannot take dataset=mnist's samples.*3072"
    ):
        sample_pass(composed("dataset.image_shape=[3,32,32]", model="mlp"))
    with pytest.raises(ModuleError, match="cannot take"):  # the launch's memory estimate makes the same pass
        fit.estimate_memory(composed("dataset.image_shape=[3,32,32]", model="mlp"), 256)
    assert sample_pass(composed("dataset.image_shape=null", model="mlp")) is None  # no shape known: no pass
