from pathlib import Path

import pytest
import yaml

from lookalike.config import CHOICES, ConfigError, load_config


def test_embedded_default_has_the_contract_keys():
    cfg = load_config(environ={})
    assert cfg.window_days == 90
    assert cfg.neighbors.k == 20
    assert cfg.model.init == "small"
    assert cfg.spark.master == "local[*]"
    assert cfg.source.url.startswith("sqlite:///") and cfg.source.url.endswith("var/sample/marketplace.db")
    assert Path(cfg.warehouse).is_absolute()


def test_yaml_then_environment_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("neighbors:\n  k: 7\nwarehouse: wh\n")
    cfg = load_config(path, environ={"LOOKALIKE_NEIGHBORS__K": "9", "LOOKALIKE_SPARK__MASTER": "spark://h:7077"})
    assert cfg.neighbors.k == 9
    assert cfg.spark.master == "spark://h:7077"
    assert cfg.warehouse == str(tmp_path / "wh")  # relative to the config file


def test_top_level_env_override():
    cfg = load_config(environ={"LOOKALIKE_WINDOW_DAYS": "30", "LOOKALIKE_WAREHOUSE": "s3://bucket/wh"})
    assert cfg.window_days == 30
    assert cfg.warehouse == "s3://bucket/wh"


@pytest.mark.parametrize("text, message", [
    ("neighbours:\n  k: 5\n", "unknown config key(s) neighbours"),
    ("neighbors:\n  kk: 5\n", "neighbors.kk"),
    ("neighbors:\n  k: many\n", "neighbors.k: expected a number"),
    ("- a\n- b\n", "must hold a mapping"),
])
def test_bad_config_files_name_the_key(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, environ={})


def test_unknown_environment_key_is_an_error():
    with pytest.raises(ConfigError, match="train.epochz"):
        load_config(environ={"LOOKALIKE_TRAIN__EPOCHZ": "3"})


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/lookalike.yaml", environ={})


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_a_value_outside_a_keys_choices_fails_when_the_config_loads_naming_the_key(key, tmp_path):
    section, name = key.split(".")
    config = tmp_path / "lookalike.yaml"
    config.write_text(yaml.safe_dump({section: {name: "no-such-choice"}}))
    with pytest.raises(ConfigError, match=rf"^{key} must be one of {', '.join(CHOICES[key])}; got 'no-such-choice'"):
        load_config(config, environ={})
    with pytest.raises(ConfigError, match=rf"^{key} must be one of"):  # the same through the environment
        load_config(None, environ={f"LOOKALIKE_{section.upper()}__{name.upper()}": "no-such-choice"})
    for allowed in CHOICES[key]:
        assert getattr(getattr(load_config(None, environ={f"LOOKALIKE_{section.upper()}__{name.upper()}": allowed}),
                               section), name) == allowed


@pytest.mark.parametrize("name", ["lookalike.demo.yaml", "lookalike.production.yaml"])
def test_the_shipped_configs_load(name):
    """The demo's and the production start's configs stay valid as keys change."""
    cfg = load_config(Path(__file__).resolve().parents[1] / name, environ={})
    if name == "lookalike.production.yaml":
        from lookalike.train.stage import HUB_NAME

        assert HUB_NAME.fullmatch(cfg.model.init) and cfg.embed.pca_dim == 128 and cfg.train.precision == "bf16"
