import os

import pytest

from project.core import config as C
from project.core.identity import run_identity

GROUPS = ["dataset", "model", "trainer", "instance", "paths", "aws", "job", "deploy"]


def options(group):
    return sorted(p.stem for p in (C.CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_group_option_composes(composed, group, option):
    pair = {"csv_regression": ["model=mlp_regressor"], "mlp_regressor": ["dataset=csv_regression"]}  # not MNIST's
    cfg = composed(f"{group}={option}", *pair.get(option, []))
    assert cfg[group] is not None
    if group == "instance":
        assert cfg.instance.type == option
        assert cfg.instance.price_per_hour > 0


def test_instance_catalog_covers_the_design_card(composed):
    required = {
        "ml.m5.xlarge",
        "ml.g4dn.xlarge",
        "ml.g4dn.12xlarge",
        "ml.g5.xlarge",
        "ml.g5.12xlarge",
        "ml.p3.2xlarge",
        "ml.p3.8xlarge",
        "ml.p3.16xlarge",
        "ml.p4d.24xlarge",
    }
    assert required <= set(options("instance"))
    cfg = composed("trainer.gpus=4", instance="ml.p3.8xlarge")
    assert (cfg.trainer.gpus, cfg.instance.gpus, cfg.instance.gpu_model) == (4, 4, "V100")


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.foo=1", "unknown key 'trainer.foo'; valid keys there: batch_size"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: Value 'abc'"),
        ("instance=ml.bogus", "unknown instance 'ml.bogus'; choose one of: ml.g4dn.12xlarge"),
        ("instance=ml.p3.8xlargee", "unknown instance 'ml.p3.8xlargee' (did you mean ml.p3.8xlarge?); choose one"),
        ("instance=p3.8xlarge", "unknown instance 'p3.8xlarge' (did you mean ml.p3.8xlarge?); choose one of: "),
        ("model=nope", "unknown model 'nope'; choose one of: cnn, mlp"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("dataset.source=x", "dataset.source is now dataset.channels.train: write dataset.channels.train=..."),
        ("dataset.sourc=x", "unknown key 'dataset.sourc'; to give the class a new argument, write +dataset.sourc=..."),
        (
            "dataset.channels.validation=x",
            "unknown key 'dataset.channels.validation'; a channel the dataset config does not declare is added "
            "with +dataset.channels.validation=<folder>",
        ),
        (
            "dataset.input_modes.train=FastFile",
            "unknown key 'dataset.input_modes'; set a channel's input mode with "
            "+dataset.input_modes.<channel>=FastFile",
        ),
        ("job.environment.FOO=1", "unknown key 'job.environment.FOO'; to add it, write +job.environment.FOO=..."),
        ("trainer.gpus=-1", "trainer.gpus must be >= 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"),
        ("trainer.log_every_n_steps=0", "trainer.log_every_n_steps must be >= 1, got 0"),
        ("trainer.limit_train_batches=-1", "trainer.limit_train_batches must be >= 0, got -1.0"),
        (
            "trainer.precision=bf16-mix",
            "trainer.precision=bf16-mix is not a Lightning precision (did you mean bf16-mixed?)",
        ),
        ("model.weight_decay=-0.1", "model.weight_decay must be >= 0, got -0.1"),
        ("model.label_smoothing=1", "model.label_smoothing must be in [0, 1), got 1.0"),
        ("+paths.scratch=/tmp", "unknown key 'paths.scratch'; valid keys there: data_dir, mounts, runs_dir"),
        ("run_name=..", "run_name='..' is not a plain folder name"),
    ],
)
def test_bad_override_is_one_clear_line(composed, override, expected):
    with pytest.raises(C.ConfigError) as info:
        composed(override)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "override,expected",
    [
        (
            "aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com",
            "aws.repository_url='123456789012.dkr.ecr.us-east-1.amazonaws.com': "
            "expected <account>.dkr.ecr.<region>.amazonaws.com/<repository>, repository names are 2-256",
        ),
        ("aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com/Proj", "aws.repository_url='"),
        ("aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com/p", "repository names are 2-256"),
        ("aws.repository_url=1234.dkr.ecr.us-east-1.amazonaws.com/proj", "aws.repository_url='1234.dkr"),
        ("aws.role_arn=arn:aws:iam::123456789012:user/me", "aws.role_arn='arn:aws:iam::123456789012:user/me': "),
        ("aws.role_arn=proj-sagemaker", "expected arn:aws:iam::<12-digit account>:role/"),
        ("aws.data_bucket=Data_Bucket", "aws.data_bucket='Data_Bucket': bucket names are 3-63"),
        ("aws.artifacts_bucket=ab", "aws.artifacts_bucket='ab': bucket names are 3-63"),
        ("aws.artifacts_bucket=192.168.0.1", "not an IP address"),
        ("aws.data_bucket=-data", "start and end with a letter or digit"),
        ("aws.region=us-east1", "aws.region='us-east1': expected a region like us-east-1"),
        ("aws.region=US-EAST-1", "aws.region='US-EAST-1'"),
    ],
)
def test_malformed_resource_names_are_refused_at_compose_time(composed, override, expected):
    with pytest.raises(C.ConfigError) as info:
        composed(override)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override",
    [
        "aws.repository_url=123456789012.dkr.ecr.us-east-1.amazonaws.com/team/proj-1.x",
        "aws.repository_url=000000000000.dkr.ecr.us-east-1.localhost.localstack.cloud:4566/proj",
        "aws.repository_url=123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn/proj",
        "aws.role_arn=arn:aws-us-gov:iam::123456789012:role/service-role/proj+sm@x",
        "aws.data_bucket=proj.data-123456789012-us-east-1",
        "aws.region=us-gov-west-1",
        "aws.region=ap-southeast-2",
    ],
)
def test_well_formed_resource_names_compose(composed, override):
    composed(override)


@pytest.mark.parametrize("override", ["trainer.precision=16", "trainer.precision=bf16", "run_name=cnn.v2_lr-0.1"])
def test_lightnings_precision_aliases_and_plain_run_names_compose(composed, override):
    composed(override)


def test_resolved_config_round_trips_and_is_validated(composed, tmp_path):
    cfg = composed("trainer.max_epochs=7", model="mlp")
    path = tmp_path / "config.yaml"
    path.write_text(C.to_yaml(cfg))
    again = C.load_resolved(path)
    assert run_identity(again) == run_identity(cfg)
    assert again.trainer.max_epochs == 7
    path.write_text(C.to_yaml(cfg).replace("max_epochs: 7", "max_epochs: seven"))
    with pytest.raises(C.ConfigError, match="trainer.max_epochs"):
        C.load_resolved(path)


def test_config_hash_tracks_what_shapes_the_result(composed):
    base = run_identity(composed())
    assert run_identity(composed("trainer.resume=false")) == base
    assert run_identity(composed("dataset.channels.train=/elsewhere")) == base
    assert run_identity(composed("trainer.seed=1")) != base
    assert run_identity(composed(instance="ml.p3.2xlarge")) == base


# --- each default in one home: conf/*.yaml holds the values, the schema only the types ----------


def test_no_default_is_stated_both_in_a_dataclass_and_in_conf():
    """A schema'd group with a conf/ folder states no value in its dataclass, and every option file
    there states every key; a group without one (sweep) keeps all its values in the dataclass."""
    from dataclasses import MISSING as NO_FACTORY
    from dataclasses import fields

    import yaml

    from project.core.config.schema import schema_of

    stated_twice, unstated = [], []
    for group in fields(C.Config):
        schema, folder = schema_of(group.name), C.CONF_DIR / group.name
        if schema is None:  # dataset, model (open groups), run_name (a leaf)
            continue
        in_schema = {f.name for f in fields(schema) if f.default != C.MISSING or f.default_factory is not NO_FACTORY}
        if not folder.is_dir():
            unstated += [f"{group.name}.{f.name}" for f in fields(schema) if f.name not in in_schema]
            continue
        stated_twice += [f"{group.name}.{name}" for name in sorted(in_schema)]
        for option in sorted(folder.glob("*.yaml")):
            keys = set(yaml.safe_load(option.read_text()))
            unstated += [f"{option.relative_to(C.CONF_DIR)}: {f.name}" for f in fields(schema) if f.name not in keys]
    assert stated_twice == [] and unstated == []
    root = yaml.safe_load((C.CONF_DIR / "config.yaml").read_text())
    assert "run_name" in root and C.Config.run_name == C.MISSING


def test_a_classifier_argument_left_out_of_a_model_file_has_one_default_litclassifiers():
    import inspect
    from dataclasses import MISSING as NO_FACTORY
    from dataclasses import fields

    from project.training.models import LitClassifier

    arguments = inspect.signature(LitClassifier.__init__).parameters
    with_default = {name for name, p in arguments.items() if p.default is not inspect.Parameter.empty}
    assert {"num_classes", "lr", "weight_decay", "label_smoothing"} <= with_default
    stated_twice = [
        f.name
        for f in fields(C.ClassifierKeys)
        if f.name in with_default and (f.default != C.MISSING or f.default_factory is not NO_FACTORY)
    ]
    assert stated_twice == []


def test_a_key_its_conf_file_leaves_out_is_one_line_naming_it(composed, tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(C.CONF_DIR, conf)
    yaml = conf / "trainer" / "default.yaml"
    yaml.write_text(yaml.read_text().replace("seed: 42\n", ""))
    with pytest.raises(C.ConfigError) as info:
        composed(conf_dir=conf)
    assert str(info.value) == (
        "trainer.seed has no value: state it in conf/trainer/ (or the run's trainer section of config.yaml) "
        "or write trainer.seed=..."
    )
    assert composed("trainer.seed=7", conf_dir=conf).trainer.seed == 7
    with pytest.raises(C.ConfigError, match="^trainer has no value: choose an option, e.g. trainer=default$"):
        composed("~trainer")


def test_a_resolved_config_that_lacks_a_key_is_refused_in_one_line(composed, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(C.to_yaml(composed()).replace("  flush_denormal: true\n", ""))
    with pytest.raises(C.ConfigError, match="^trainer.flush_denormal has no value: "):
        C.load_resolved(path)


# --- the composed-config cache ------------------------------------------------------------------


def _shape(cfg):
    """Every node's class and schema metadata, so a cached config must be typed like Hydra's."""
    from omegaconf import ListConfig, OmegaConf

    out = {}

    def walk(node, path):
        keys = range(len(node)) if isinstance(node, ListConfig) else list(node.keys())
        for key in keys:
            child = node._get_node(key)
            meta = child._metadata
            out[f"{path}{key}"] = (type(child).__name__, str(meta.ref_type), str(meta.object_type), meta.optional)
            if OmegaConf.is_config(child) and not child._is_missing() and not child._is_none():
                walk(child, f"{path}{key}.")

    walk(cfg, "")
    return out


@pytest.mark.parametrize(
    "overrides", [[], ["model=mlp", "trainer.gpus=4", "instance=ml.p3.8xlarge"], ["run_name=x", "aws.region=eu-west-1"]]
)
def test_a_cached_config_is_the_one_hydra_composes(overrides, monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    monkeypatch.setenv(C.COMPOSE_CACHE_ENV, "off")
    fresh = C.compose(overrides)
    monkeypatch.setenv(C.COMPOSE_CACHE_ENV, str(tmp_path))
    C.compose(overrides)
    assert len(list((tmp_path / "compose").glob("*.json"))) == 1
    cached = C.compose(overrides)
    assert OmegaConf.to_yaml(cached) == OmegaConf.to_yaml(fresh)
    assert _shape(cached) == _shape(fresh)
    assert OmegaConf.is_struct(cached)
    with pytest.raises(Exception, match="Key 'bogus' not in 'TrainerConfig'"):
        cached.trainer.bogus = 1


def test_a_repeated_command_line_skips_hydra(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from project.core.config import compose; c = compose(['trainer.seed=7']); "
        "print(c.trainer.seed, 'hydra' in sys.modules)"
    )
    env = {**os.environ, C.COMPOSE_CACHE_ENV: str(tmp_path), "PYTHONPATH": str(C.CONF_DIR.parent)}
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
        for _ in range(2)
    ]
    assert runs == [["7", "True"], ["7", "False"]]


def test_editing_a_config_file_composes_afresh(composed, monkeypatch, tmp_path):
    import shutil

    conf = tmp_path / "conf"
    shutil.copytree(C.CONF_DIR, conf)
    monkeypatch.setenv(C.COMPOSE_CACHE_ENV, str(tmp_path / "cache"))
    assert composed(conf_dir=conf).trainer.max_epochs == 3
    yaml = conf / "trainer" / "default.yaml"
    yaml.write_text(yaml.read_text().replace("max_epochs: 3", "max_epochs: 5"))
    assert composed(conf_dir=conf).trainer.max_epochs == 5
    (conf / "model" / "extra.yaml").write_text((conf / "model" / "mlp.yaml").read_text())
    assert composed(model="extra", conf_dir=conf).model.name == "mlp"
    assert len(list((tmp_path / "cache" / "compose").glob("*.json"))) == 3


def test_bad_configs_are_never_cached_and_a_broken_entry_is_recomposed(monkeypatch, tmp_path):
    monkeypatch.setenv(C.COMPOSE_CACHE_ENV, str(tmp_path))
    for _ in range(2):
        with pytest.raises(C.ConfigError, match="unknown key 'trainer.foo'"):
            C.compose(["trainer.foo=1"])
        with pytest.raises(C.ConfigError, match="trainer.max_epochs must be >= 1"):
            C.compose(["trainer.max_epochs=0"])
    assert not (tmp_path / "compose").exists()
    C.compose(["trainer.seed=3"])
    (entry,) = (tmp_path / "compose").glob("*.json")
    entry.write_text('{"trainer": {"seed": "not a number"')  # half written by a crash
    assert C.compose(["trainer.seed=3"]).trainer.seed == 3
    entry.write_text('{"trainer": {"seed": "not a number"}}')  # valid JSON the schema refuses
    assert C.compose(["trainer.seed=3"]).trainer.seed == 3


def test_the_cache_can_be_turned_off(monkeypatch, tmp_path):
    monkeypatch.setenv(C.COMPOSE_CACHE_ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert C.compose_cache_dir() is None
    C.compose(["trainer.seed=4"])
    assert not any(tmp_path.iterdir())


def test_an_experiment_presets_several_groups_and_overrides_still_win(composed):
    cfg = composed(experiment="gpu_fast")
    assert (cfg.trainer.batch_size, cfg.trainer.precision, cfg.trainer.channels_last, cfg.model.lr) == (
        1024,
        "bf16-mixed",
        True,
        0.03,
    )
    assert composed("trainer.batch_size=512", experiment="gpu_fast").trainer.batch_size == 512
    assert composed().trainer.batch_size == 256  # no preset unless asked
    with pytest.raises(C.ConfigError, match="unknown experiment 'fastest'; choose one of: gpu_fast"):
        composed(experiment="fastest")


def test_atomic_writes_leave_the_old_file_or_the_new_never_a_part(tmp_path):
    from project.core.atomic import replacing, write_atomically

    dest = tmp_path / "deep" / "file.json"
    write_atomically(dest, "old")
    with pytest.raises(RuntimeError), replacing(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert dest.read_text() == "old" and sorted(p.name for p in dest.parent.iterdir()) == ["file.json"]
    with replacing(dest) as one, replacing(dest) as two:  # two writers at once: each has its own file
        assert one != two
        one.write_text("one")
        two.write_text("two")
    assert dest.read_text() == "one" and sorted(p.name for p in dest.parent.iterdir()) == ["file.json"]


def test_the_parameter_counts_model_comments_state_are_the_models(composed):
    """A `(61.0k parameters)` in a model file's comment is what the run line prints for that model."""
    import re

    from hydra.utils import instantiate

    from project.training.reporting import _count

    stated = []
    for option in options("model"):
        comments = "".join(line for line in (C.CONF_DIR / "model" / f"{option}.yaml").open() if line.startswith("#"))
        stated += [(option, figure) for figure in re.findall(r"([\d.]+[kM]?) parameters", comments)]
    assert "cnn" in dict(stated), stated  # the default's comment states it; a reworded comment must keep the figure
    for option, figure in stated:
        net = instantiate(composed(f"model={option}").model.net)
        assert _count(sum(p.numel() for p in net.parameters())) == figure, (option, figure)
