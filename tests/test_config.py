from pathlib import Path

import pytest

from project import config as C

GROUPS = ["dataset", "model", "trainer", "instance", "paths", "aws", "job"]


def options(group):
    return sorted(p.stem for p in (C.CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_config_group_option_composes(group, option):
    cfg = C.compose([f"{group}={option}"])
    assert cfg[group] is not None
    if group == "instance":
        assert cfg.instance.type == option
        assert cfg.instance.price_per_hour > 0


def test_instance_catalog_covers_the_design_card():
    required = {
        "ml.m5.xlarge", "ml.g4dn.xlarge", "ml.g4dn.12xlarge", "ml.g5.xlarge", "ml.g5.12xlarge",
        "ml.p3.2xlarge", "ml.p3.8xlarge", "ml.p3.16xlarge", "ml.p4d.24xlarge",
    }
    assert required <= set(options("instance"))
    cfg = C.compose(["trainer.gpus=4", "instance=ml.p3.8xlarge"])
    assert (cfg.trainer.gpus, cfg.instance.gpus, cfg.instance.gpu_model) == (4, 4, "V100")


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.foo=1", "unknown key 'trainer.foo'; valid keys there: batch_size"),
        ("trainer.max_epochs=abc", "trainer.max_epochs: Value 'abc'"),
        ("instance=ml.bogus", "unknown instance 'ml.bogus'; choose one of: ml.g4dn.12xlarge"),
        ("model=nope", "unknown model 'nope'; choose one of: cnn, mlp"),
        ("nonsense=1", "unknown key 'nonsense'"),
        ("trainer.gpus=-1", "trainer.gpus must be >= 0"),
        ("trainer.max_epochs=0", "trainer.max_epochs must be >= 1"),
    ],
)
def test_bad_override_is_one_clear_line(override, expected):
    with pytest.raises(C.ConfigError) as info:
        C.compose([override])
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_gpus_mapping_to_lightning():
    assert C.trainer_device_kwargs(0) == {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto"}
    assert C.trainer_device_kwargs(1)["strategy"] == "auto"
    four = C.trainer_device_kwargs(4)
    assert (four["accelerator"], four["devices"], four["strategy"]) == ("gpu", 4, "ddp")
    assert C.trainer_device_kwargs(1, num_nodes=2)["strategy"] == "ddp"
    assert C.trainer_device_kwargs(0, launched_processes=2) == {
        "accelerator": "cpu", "devices": 2, "num_nodes": 1, "strategy": "ddp",
    }


def test_gpus_default_to_all_available_and_never_more():
    assert C.resolve_gpus(None, 4) == 4
    assert C.resolve_gpus(None, 0) == 0
    assert C.resolve_gpus(2, 4) == 2
    with pytest.raises(C.ConfigError, match="only 1 GPU"):
        C.resolve_gpus(4, 1)


def test_resolved_config_round_trips_and_is_validated(tmp_path):
    cfg = C.compose(["model=mlp", "trainer.max_epochs=7"])
    path = tmp_path / "config.yaml"
    path.write_text(C.to_yaml(cfg))
    again = C.load_resolved(path)
    assert C.config_hash(again) == C.config_hash(cfg)
    assert again.trainer.max_epochs == 7
    path.write_text(C.to_yaml(cfg).replace("max_epochs: 7", "max_epochs: seven"))
    with pytest.raises(C.ConfigError, match="trainer.max_epochs"):
        C.load_resolved(path)


def test_config_hash_tracks_what_shapes_the_result():
    base = C.config_hash(C.compose([]))
    assert C.config_hash(C.compose(["trainer.resume=false"])) == base
    assert C.config_hash(C.compose(["dataset.source=/elsewhere"])) == base
    assert C.config_hash(C.compose(["trainer.seed=1"])) != base
    assert C.config_hash(C.compose(["instance=ml.p3.2xlarge"])) == base
