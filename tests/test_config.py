import json
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


# ---- metrics.json: one schema for its writer and every reader --------------------------------

def _document(**over):
    doc = {"schema_version": 1, "run_id": "r", "mode": "substitution", "private": False,
           "data": {"source": "phantom", "resolution": 16, "phantom": True}}
    return {**doc, **over}


@pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*")  # dumping the deliberately wrong field
def test_metrics_are_validated_on_write_and_read(tmp_path):
    from fedsynth.metrics_schema import RunMetrics
    from fedsynth.rundir import RunDir, RunDirError

    run = RunDir(tmp_path, "r")
    run.write_metrics(RunMetrics.model_validate(_document()))
    assert run.read_metrics().run_id == "r"
    bad = RunMetrics.model_construct(**{**RunMetrics.model_validate(_document()).__dict__, "private": "maybe"})
    with pytest.raises(RunDirError, match="private"):
        run.write_metrics(bad)
    (tmp_path / "metrics.json").write_text(json.dumps(_document(pooled={"n": -1})))
    with pytest.raises(RunDirError, match="pooled"):
        run.read_metrics()
    (tmp_path / "metrics.json").write_text(json.dumps(_document(schema_version=99)))
    with pytest.raises(RunDirError, match="newer"):
        run.read_metrics()


def test_a_document_from_before_the_schema_reads_as_version_0(tmp_path):
    from fedsynth.rundir import RunDir

    doc = _document()
    del doc["schema_version"]
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    assert RunDir(tmp_path, "r").read_metrics().schema_version == 0


def test_a_damaged_optional_section_is_left_out_with_a_note(tmp_path):
    from fedsynth.rundir import RunDir, RunDirError

    (tmp_path / "metrics.json").write_text(json.dumps(_document(fidelity={"pooled": "garbage"})))
    run = RunDir(tmp_path, "r")
    with pytest.raises(RunDirError):
        run.read_metrics()
    metrics, notes = run.read_metrics_salvaged()
    assert metrics.fidelity.pooled is None and len(notes) == 1 and "fidelity" in notes[0]


def test_a_privacy_block_without_a_generator_section_gets_the_private_default():
    assert load_config(None, ["privacy.epsilon=3"]).generator.family == "dp-merf"
    assert load_config(None).generator.family == "gan", "without privacy: the GAN"
    assert load_config(None, ["privacy.epsilon=3", "generator.epochs=5"]).generator.family == "gan", \
        "a generator section the user wrote is theirs"
    resolved = load_config(None, ["privacy.epsilon=3"]).to_dict()
    assert resolved["generator"]["family"] == "dp-merf", "the resolved config records the choice"


@pytest.mark.parametrize(("value", "machine", "sites", "cpus", "threads"), [
    ("auto", 2, 3, 0.6666, 1),   # every site at once, one thread each, never more than the machine
    ("auto", 16, 3, 5.3333, 5),
    ("auto", 1, 8, 0.125, 1),
    (1, 2, 3, 1.0, 1),           # a number is taken as given
    (2.5, 2, 3, 2.5, 2),
])
def test_cpus_per_site_auto_shares_the_machine_among_the_sites(value, machine, sites, cpus, threads):
    fed = load_config(None, [f"federation.cpus_per_site={value}", f"federation.num_sites={sites}"]).federation
    assert fed.site_cpus(machine) == pytest.approx(cpus) and fed.site_threads(machine) == threads
    if value == "auto":
        assert fed.site_cpus(machine) * sites <= machine  # Ray can place every site at once


@pytest.mark.parametrize("value", ["0", "-1", "many", "2000", ".nan"])
def test_a_bad_cpus_per_site_is_refused_with_its_name(value):
    with pytest.raises(ConfigError, match="cpus_per_site"):
        load_config(None, [f"federation.cpus_per_site={value}"])


def test_the_simulation_asks_ray_for_the_resolved_share():
    from fedsynth.simulation.engine import backend_config

    cfg = load_config(None, ["federation.cpus_per_site=auto"])
    resources = backend_config(cfg)["client_resources"]
    assert resources["num_cpus"] == cfg.federation.site_cpus() and resources["num_cpus"] > 0
