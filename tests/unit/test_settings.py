"""Tests of layered settings (fedvox.wire.settings) through the server's config loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvox.server.config import ServerConfig, load_server_config
from fedvox.wire.settings import ConfigError, parse_overrides, to_dict

YAML = """\
rounds: 3
min_sites: 4
train:
  lr: 0.01
  local_steps: 7
model:
  channels: [4, 8, 16]
  strides: [2, 2]
"""
ENV = {"FEDVOX_SERVER_ROUNDS": "4", "FEDVOX_SERVER_TRAIN_LR": "0.02"}
OVERRIDES = {"rounds": "7", "train.lr": "0.5"}


def yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return path


def test_defaults_only() -> None:
    config = load_server_config(None, None, {})
    assert config == ServerConfig()
    assert (config.rounds, config.train.lr, config.model.channels) == (
        5,
        0.001,
        (16, 32, 64, 128, 256),
    )


@pytest.mark.parametrize(
    ("use_env", "use_overrides", "rounds", "lr"),
    [
        (False, False, 3, 0.01),  # YAML over defaults
        (True, False, 4, 0.02),  # environment over YAML
        (True, True, 7, 0.5),  # overrides over environment
        (False, True, 7, 0.5),
    ],
)
def test_precedence(
    tmp_path: Path, use_env: bool, use_overrides: bool, rounds: int, lr: float
) -> None:
    config = load_server_config(
        yaml_file(tmp_path, YAML), OVERRIDES if use_overrides else None, ENV if use_env else {}
    )
    assert (config.rounds, config.train.lr) == (rounds, lr)
    assert type(config.rounds) is int
    # what only the YAML set survives the later layers; the rest keeps its defaults
    assert (config.min_sites, config.train.local_steps) == (4, 7)
    assert (config.model.channels, config.model.strides) == ((4, 8, 16), (2, 2))
    assert (config.train.batch_size, config.fraction, config.port) == (2, 1.0, 8787)


def test_environment_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDVOX_SERVER_ROUNDS", "9")
    monkeypatch.setenv("FEDVOX_SERVER_TRAIN_OPTIMIZER", "sgd")
    config = load_server_config()
    assert (config.rounds, config.train.optimizer) == (9, "sgd")
    assert load_server_config(None, None, {}).rounds == 5  # an explicit environ replaces it


def test_tuples_from_overrides_and_environment() -> None:
    config = load_server_config(
        None,
        {"model.channels": "[8, 16]", "model.strides": "[2]"},
        {"FEDVOX_SERVER_ALLOWED_SITES": "[site-a, site-b]"},
    )
    assert config.model.channels == (8, 16)
    assert config.model.strides == (2,)
    assert config.allowed_sites == ("site-a", "site-b")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("true", True), ("YES", True), ("1", True), ("on", True)],
        *[("false", False), (" No ", False), ("0", False), ("off", False)],
    ],
)
def test_booleans_from_strings(text: str, value: bool) -> None:
    config = load_server_config(None, {"evaluate": text}, {"FEDVOX_SERVER_TRAIN_AMP": text})
    assert config.evaluate is value
    assert config.train.amp is value


def test_booleans_from_yaml(tmp_path: Path) -> None:
    config = load_server_config(yaml_file(tmp_path, "evaluate: false\ntrain: {amp: no}\n"))
    assert config.evaluate is False
    assert config.train.amp is False


def test_numbers_from_yaml_are_converted(tmp_path: Path) -> None:
    config = load_server_config(yaml_file(tmp_path, "rounds: 2.0\ntrain: {lr: 1}\n"), None, {})
    assert config.rounds == 2 and type(config.rounds) is int
    assert config.train.lr == 1.0 and type(config.train.lr) is float


def test_empty_yaml_means_defaults(tmp_path: Path) -> None:
    assert load_server_config(yaml_file(tmp_path, ""), None, {}) == ServerConfig()


# ---- errors name the setting ----


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("roundz: 3\n", "unknown setting 'roundz'"),
        ("train:\n  lrr: 0.1\n", "unknown setting 'train.lrr'"),
        ("rounds: abc\n", "setting 'rounds': 'abc' is not a valid int"),
        ("rounds: 2.5\n", "setting 'rounds': 2.5 is not a valid int"),
        ("rounds: true\n", "setting 'rounds': True is not a valid int"),
        ("evaluate: 'false'\n", "setting 'evaluate': 'false' is not a valid bool"),
        ("train:\n  lr: [1]\n", r"setting 'train.lr': \[1\] is not a valid float"),
        ("model:\n  channels: 8\n", "setting 'model.channels': 8 is not a valid tuple"),
        ("model:\n  channels: [8, x]\n", r"'model.channels': \[8, 'x'\] is not a valid tuple"),
        ("train: 5\n", r"setting 'train' must be a section \(mapping\)"),
        ("- 1\n- 2\n", "must hold a mapping at the top level"),
        ("rounds: [1\n", "cannot read config file"),
    ],
)
def test_bad_yaml_is_a_config_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_server_config(yaml_file(tmp_path, text), None, {})


def test_missing_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.yaml"):
        load_server_config(tmp_path / "nope.yaml", None, {})


@pytest.mark.parametrize("key", ["roundz", "train.lrr", "train", "model.channels.0"])
def test_unknown_override_lists_known_settings(key: str) -> None:
    with pytest.raises(ConfigError, match=f"unknown setting '{key}'; known: .*train.lr") as info:
        load_server_config(None, {key: "1"}, {})
    assert "rounds" in str(info.value)


@pytest.mark.parametrize(
    ("overrides", "environ", "message"),
    [
        ({"rounds": "abc"}, {}, "setting 'rounds': 'abc' is not a number"),
        ({}, {"FEDVOX_SERVER_ROUNDS": "abc"}, "setting 'rounds': 'abc' is not a number"),
        ({"rounds": "2.5"}, {}, "setting 'rounds': 2.5 is not a valid int"),
        ({"train.lr": "fast"}, {}, "setting 'train.lr': 'fast' is not a number"),
        ({"evaluate": "maybe"}, {}, "setting 'evaluate': 'maybe' is not a boolean"),
        ({"model.strides": "2"}, {}, "setting 'model.strides': 2 is not a valid tuple"),
    ],
)
def test_bad_string_value_is_a_config_error(
    overrides: dict[str, str], environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_server_config(None, overrides, environ)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fraction": "0"}, "fraction and quorum must lie in"),
        ({"quorum": "1.5"}, "fraction and quorum must lie in"),
        ({"min_sites": "0"}, "min_sites >= 1"),
        ({"rounds": "-1"}, "rounds >= 0"),
        ({"round_timeout_s": "0"}, "timeouts must be positive"),
        ({"model.channels": "[8, 16, 32]", "model.strides": "[2]"}, "model.strides needs 2"),
        ({"model.norm": "group"}, "model.norm must be one of"),
        ({"train.optimizer": "rmsprop"}, "train.optimizer must be adam or sgd"),
    ],
)
def test_validation_errors_name_the_setting(overrides: dict[str, str], message: str) -> None:
    # validation failures are plain ValueErrors (ConfigError is reserved for unknown/mistyped keys)
    with pytest.raises(ValueError, match=message):
        load_server_config(None, overrides, {})


def test_null_yaml_section_with_environment_value(tmp_path: Path) -> None:
    # an empty YAML section means "no settings here", so the environment fills it
    config = load_server_config(
        yaml_file(tmp_path, "train:\n"), None, {"FEDVOX_SERVER_TRAIN_LR": "1"}
    )
    assert config.train.lr == 1.0 and config.train.local_steps == 20


def test_large_integer_from_a_string_is_exact() -> None:
    assert load_server_config(None, {"seed": "9007199254740993"}, {}).seed == 9007199254740993


# ---- helpers ----


def test_parse_overrides() -> None:
    assert parse_overrides(["rounds=7", " train.lr =0.5", "host=a=b", "state_dir="]) == {
        "rounds": "7",
        "train.lr": "0.5",
        "host": "a=b",
        "state_dir": "",
    }


@pytest.mark.parametrize("pair", ["rounds", "=7"])
def test_parse_overrides_rejects_malformed_pairs(pair: str) -> None:
    with pytest.raises(ConfigError, match=f"KEY=VALUE, got '{pair}'"):
        parse_overrides([pair])


def test_to_dict_nests_sections() -> None:
    data = to_dict(load_server_config(None, {"train.lr": "0.5"}, {}))
    assert data["train"]["lr"] == 0.5
    assert data["model"]["channels"] == (16, 32, 64, 128, 256)
    assert data["rounds"] == 5
