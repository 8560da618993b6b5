from pathlib import Path

import pytest

from fedsynth.config import RunConfig, load_config, parse_overrides
from fedsynth.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_demo():
    cfg = load_config()
    assert cfg.run.name == "demo"
    assert cfg.data.source == "phantom"
    assert cfg.federation.num_sites == 3
    assert cfg.run.mode == "substitution"


def test_demo_yaml_equals_builtin_defaults():
    assert load_config(ROOT / "configs" / "demo.yaml").to_dict() == RunConfig().to_dict()


def test_every_shipped_config_loads():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_unknown_key_names_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("federation:\n  num_site: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "federation.num_site" in str(err.value)
    assert "unknown key" in str(err.value)


def test_bad_value_names_the_field_and_value(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  resolution: 48\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert "data.resolution" in str(err.value) and "48" in str(err.value)


def test_negative_and_wrong_type_rejected():
    with pytest.raises(ConfigError, match="generator.epochs"):
        load_config(overrides=["generator.epochs=0"])
    with pytest.raises(ConfigError, match="federation.num_sites"):
        load_config(overrides=["federation.num_sites=three"])
    with pytest.raises(ConfigError, match="federation.partition"):
        load_config(overrides=["federation.partition=random"])


def test_cross_field_check():
    with pytest.raises(ConfigError, match="min_sites"):
        load_config(overrides=["federation.num_sites=2", "federation.min_sites=3"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_overrides_parse_yaml_values_and_nest():
    assert parse_overrides(["a.b=3", "a.c=true", "d=x"]) == {"a": {"b": 3, "c": True}, "d": "x"}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["novalue"])
    cfg = load_config(overrides=["federation.num_sites=5", "run.seed=7"])
    assert cfg.federation.num_sites == 5 and cfg.run.seed == 7


def test_json_roundtrip_is_exact():
    cfg = load_config(overrides=["federation.partition=dirichlet", "federation.dirichlet_alpha=0.3"])
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_resolved_yaml_reloads(tmp_path):
    cfg = load_config(overrides=["data.resolution=64"])
    p = tmp_path / "resolved.yaml"
    p.write_text(cfg.to_yaml())
    assert load_config(p) == cfg
    assert cfg.classifier_arch() == "resnet18"
    assert load_config().classifier_arch() == "small-cnn"
