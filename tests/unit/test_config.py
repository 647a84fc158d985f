"""Configuration: the example config is the schema, and every bad value names its key."""
from __future__ import annotations

import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from bridge.config import PLACEHOLDER_PICKLE_KEY, PLACEHOLDER_TOKEN, Config, ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "bridge" / "example-config.yaml"
TOKENS = {"as_token": "a" * 32, "hs_token": "h" * 32}


def write_yaml(path: Path, data: dict) -> Path:
    with open(path, "w") as f:
        YAML().dump(data, f)
    return path


def load(tmp_path: Path, data: dict) -> Config:
    """A config whose file holds only `data`; every other key comes from the example."""
    config = Config(str(write_yaml(tmp_path / "config.yaml", data)))
    config.load()
    config.update(save=False)
    return config


def valid(**sections) -> dict:
    """A minimal valid user config (tokens filled in), with sections overridden."""
    data = {"appservice": dict(TOKENS), "homeserver": {"domain": "chat.example.net"}}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def assert_invalid(tmp_path: Path, data: dict, key: str, *, need_tokens: bool = True) -> str:
    config = load(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        config.validate(need_tokens=need_tokens)
    assert caught.value.key == key
    assert key in str(caught.value)
    return str(caught.value)


def test_example_config_validates_once_tokens_and_domain_are_filled_in(tmp_path):
    example = YAML().load(EXAMPLE.read_text())
    example["appservice"].update(TOKENS)
    example["homeserver"]["domain"] = "chat.example.net"
    config = load(tmp_path, example)
    config.validate()
    assert config["homeserver.domain"] == "chat.example.net"
    assert config["appservice.as_token"] == TOKENS["as_token"]


def test_the_examples_domain_is_refused(tmp_path):
    """A forgotten (or null) homeserver.domain falls back to the example's: that must not
    pass silently."""
    message = assert_invalid(tmp_path, valid(homeserver={"domain": None}), "homeserver.domain")
    assert "example.org" in message


def test_the_top_level_example_is_the_package_example():
    assert (REPO / "config.example.yaml").read_text() == EXAMPLE.read_text()


def test_missing_keys_are_filled_from_the_example(tmp_path):
    config = load(tmp_path, valid(homeserver={"domain": "chat.example.net"}))
    config.validate()
    assert config["homeserver.domain"] == "chat.example.net"
    assert config["appservice.port"] == 29340
    assert config["bridge.ghost_localpart_template"] == "_stranger_{random}"


def test_placeholder_tokens_are_accepted_only_when_generating(tmp_path):
    config = load(tmp_path, {"homeserver": {"domain": "chat.example.net"}})
    config.validate(need_tokens=False)
    with pytest.raises(ConfigError) as caught:
        config.validate()
    assert caught.value.key == "appservice.as_token"


@pytest.mark.parametrize("key", ["as_token", "hs_token"])
def test_placeholder_token_message_says_how_to_generate(tmp_path, key):
    data = valid(appservice={key: PLACEHOLDER_TOKEN})
    message = assert_invalid(tmp_path, data, f"appservice.{key}")
    assert "-g" in message


def test_short_token_is_rejected(tmp_path):
    assert_invalid(tmp_path, valid(appservice={"hs_token": "short"}), "appservice.hs_token")


@pytest.mark.parametrize("section, key, value", [
    ("homeserver", "address", "not a url"),
    ("homeserver", "address", "ftp://example.org"),
    ("homeserver", "address", "http://"),
    ("homeserver", "address", 8008),
    ("appservice", "address", "127.0.0.1:29340"),
    ("homeserver", "domain", ""),
    ("homeserver", "domain", "exa mple.org"),
    ("homeserver", "verify_ssl", "yes"),
    ("appservice", "port", 0),
    ("appservice", "port", 70000),
    ("appservice", "port", "x"),
    ("appservice", "port", True),
    ("appservice", "id", "has space"),
    ("appservice", "bot_username", "Upper"),
    ("appservice", "bot_displayname", 12),
    ("database", "uri", "mysql://user@host/db"),
    ("database", "uri", "sqlite:///bridge.db"),
    ("database", "uri", ""),
    ("database", "pool_min_size", 0),
    ("database", "pool_max_size", 0),
    ("database", "migrate_on_start", "sometimes"),
    ("bridge", "ghost_localpart_template", "_stranger_"),
    ("bridge", "ghost_localpart_template", "{random}"),
    ("bridge", "ghost_localpart_template", "_s_{random}_{random}"),
    ("bridge", "ghost_localpart_template", "_Stranger_{random}"),
    ("bridge", "ghost_localpart_template", "_stranger_{other}"),
    ("bridge", "ghost_displayname", ""),
    ("bridge", "invite_timeout", 1),
    ("bridge", "max_body_bytes", 0),
    ("bridge", "command_prefix", "!!!!"),
    ("logging", "level", "VERBOSE"),
    ("logging", "level", "info"),
    ("logging", "format", "xml"),
])
def test_invalid_value_names_its_key(tmp_path, section, key, value):
    # (A key that is absent or null in the file takes the example's value, mautrix's
    # convention, so "missing" here means set but empty.)
    assert_invalid(tmp_path, valid(**{section: {key: value}}), f"{section}.{key}")


def test_pool_max_below_min_is_rejected(tmp_path):
    data = valid(database={"pool_min_size": 5, "pool_max_size": 2})
    assert_invalid(tmp_path, data, "database.pool_max_size")


@pytest.mark.parametrize("uri", ["postgres://u@h/db", "postgresql://u:p@h:5433/db"])
def test_postgres_uris_are_accepted(tmp_path, uri):
    load(tmp_path, valid(database={"uri": uri})).validate()


def test_bot_mxid(tmp_path):
    config = load(tmp_path, valid(homeserver={"domain": "chat.example.net"},
                                  appservice={"bot_username": "omeglebot"}))
    assert config.bot_mxid == "@omeglebot:chat.example.net"


@pytest.mark.parametrize("template", ["_stranger_{random}", "{random}.anon", "sb/{random}-x"])
def test_ghost_mxids_are_random_and_match_the_ghost_namespace(tmp_path, template):
    config = load(tmp_path, valid(bridge={"ghost_localpart_template": template}))
    config.validate()
    first, second = config.ghost_mxid(), config.ghost_mxid()
    assert first != second
    for mxid in (first, second):
        assert re.fullmatch(config.ghost_regex, mxid)
        assert config.is_ghost(mxid)
        assert mxid.endswith(":chat.example.net")
    assert not config.is_ghost(config.bot_mxid)


def test_ghost_random_parts_use_every_character_in_every_position(tmp_path):
    config = load(tmp_path, valid(bridge={"ghost_localpart_template": "{random}"}))
    parts = [config.ghost_mxid()[1:].split(":")[0] for _ in range(3000)]
    assert {len(p) for p in parts} == {20}
    for position in range(20):
        assert {p[position] for p in parts} == set(string.ascii_lowercase + string.digits)


def test_is_ghost_rejects_lookalikes(tmp_path):
    config = load(tmp_path, valid())
    ghost = config.ghost_mxid()
    assert not config.is_ghost(ghost + ".evil.example")
    assert not config.is_ghost(ghost.replace(":chat.example.net", ":chatXexample.net"))
    assert not config.is_ghost("@_stranger_:chat.example.net")
    assert not config.is_ghost("@someone_stranger_abc:chat.example.net")
    assert not config.is_ghost("@alice:chat.example.net")


# -- the command line -------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60)


def test_generate_registration(tmp_path):
    config_path = write_yaml(tmp_path / "config.yaml", {"homeserver": {"domain": "chat.example.net"}})
    registration_path = tmp_path / "registration.yaml"
    result = run_cli("-g", "-c", str(config_path), "-r", str(registration_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    reg = YAML().load(registration_path.read_text())
    saved = YAML().load(config_path.read_text())
    # Both hold the tokens: readable by their owner only.
    assert registration_path.stat().st_mode & 0o077 == 0
    assert config_path.stat().st_mode & 0o077 == 0
    assert reg["as_token"] == saved["appservice"]["as_token"]
    assert reg["hs_token"] == saved["appservice"]["hs_token"]
    assert reg["as_token"] != reg["hs_token"]
    for token in (reg["as_token"], reg["hs_token"]):
        assert token != PLACEHOLDER_TOKEN and len(token) >= 32
    assert reg["id"] == "strangerbridge"
    assert reg["url"] == "http://127.0.0.1:29340"

    users = reg["namespaces"]["users"]
    assert len(users) == 2
    assert all(ns["exclusive"] is True for ns in users)
    regexes = [ns["regex"] for ns in users]
    assert any(re.fullmatch(r, "@strangerbot:chat.example.net") for r in regexes)

    # The saved config is complete and passes validation (tokens included), and its ghosts
    # fall inside the registration's exclusive namespace.
    config = Config(str(config_path))
    config.load()
    config.update(save=False)
    config.validate()
    assert any(re.fullmatch(r, config.ghost_mxid()) for r in regexes)
    assert not any(re.fullmatch(r, "@alice:chat.example.net") for r in regexes)

    # A random pickle key replaced the example's, so the bridge may start.
    pickle_key = saved["bridge"]["encryption"]["pickle_key"]
    assert pickle_key != PLACEHOLDER_PICKLE_KEY and len(pickle_key) >= 32
    config.validate(starting=True)

    # A second run makes new tokens, and keeps the pickle key: the stored keys need it.
    result = run_cli("-g", "-c", str(config_path), "-r", str(registration_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    again = YAML().load(registration_path.read_text())
    assert {again["as_token"], again["hs_token"]}.isdisjoint({reg["as_token"], reg["hs_token"]})
    assert YAML().load(config_path.read_text())["bridge"]["encryption"]["pickle_key"] == pickle_key


def test_cli_refuses_the_placeholder_pickle_key(tmp_path):
    config_path = write_yaml(tmp_path / "config.yaml", valid())
    result = run_cli("-c", str(config_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "bridge.encryption.pickle_key" in result.stderr
    assert "-g" in result.stderr


def test_cli_refuses_an_invalid_key(tmp_path):
    config_path = write_yaml(tmp_path / "config.yaml", valid(appservice={"port": 70000}))
    result = run_cli("-c", str(config_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "appservice.port" in result.stderr


def test_cli_refuses_placeholder_tokens_pointing_at_generation(tmp_path):
    config_path = write_yaml(tmp_path / "config.yaml", {"homeserver": {"domain": "chat.example.net"}})
    result = run_cli("-c", str(config_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "appservice.as_token" in result.stderr
    assert "-g" in result.stderr


def test_cli_generation_refuses_an_invalid_key(tmp_path):
    config_path = write_yaml(tmp_path / "config.yaml", {"logging": {"level": "LOUD"},
                                                          "homeserver": {"domain": "chat.example.net"}})
    registration_path = tmp_path / "registration.yaml"
    result = run_cli("-g", "-c", str(config_path), "-r", str(registration_path), cwd=tmp_path)
    assert result.returncode != 0
    assert "logging.level" in result.stderr
    assert not registration_path.exists()


def test_cli_missing_config_file(tmp_path):
    result = run_cli("-c", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert result.returncode != 0
    assert "nope.yaml" in result.stderr


EPHEMERAL_FLAGS = ("receive_ephemeral", "de.sorunome.msc2409.push_ephemeral")
ENCRYPTION_FLAGS = ("org.matrix.msc3202", "io.element.msc4190")


@pytest.mark.parametrize("encryption, flagged", [
    ({"appservice": True}, True),
    ({"appservice": False}, False),
    ({"appservice": True, "allow": False}, False),  # no encryption: nothing to ask for
])
def test_registration_has_the_flags_each_mode_needs(tmp_path, encryption, flagged):
    config_path = write_yaml(tmp_path / "config.yaml", {
        "homeserver": {"domain": "chat.example.net"}, "bridge": {"encryption": encryption}})
    registration_path = tmp_path / "registration.yaml"
    result = run_cli("-g", "-c", str(config_path), "-r", str(registration_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reg = YAML().load(registration_path.read_text())
    assert {flag: reg.get(flag) for flag in ENCRYPTION_FLAGS} == {
        flag: (True if flagged else None) for flag in ENCRYPTION_FLAGS}
    # Typing and read receipts are relayed in every mode.
    assert all(reg.get(flag) is True for flag in EPHEMERAL_FLAGS)
