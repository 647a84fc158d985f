"""bridge.instance and bridge.cluster.*: defaults, the name used in logs, bad values named,
and several processes with encryption needing a stable name each."""
from __future__ import annotations

import logging
import os
import socket

import pytest

from bridge.__main__ import setup_logging
from tests.unit.test_config import assert_invalid, load, valid

PLAIN = {"encryption": {"allow": False}}


def test_defaults_one_process(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.cluster.enabled"] is False
    assert config["bridge.cluster.partitions"] == 64
    assert config["bridge.instance"] == ""
    assert config.instance == f"{socket.gethostname()}-{os.getpid()}"


def test_a_cluster_without_encryption_is_valid(tmp_path):
    config = load(tmp_path, valid(bridge={**PLAIN, "instance": "bridge-2",
                                          "cluster": {"enabled": True, "partitions": 32}}))
    config.validate()
    assert config.instance == "bridge-2"
    assert config["bridge.cluster.partitions"] == 32


def test_a_cluster_with_encryption_needs_a_named_instance(tmp_path):
    """Each process keeps a bot device of its own under its name: a name that changes with
    every start (the default, host and PID) would make a new device each time."""
    message = assert_invalid(tmp_path, valid(bridge={"cluster": {"enabled": True}}),
                             "bridge.instance")
    assert "bridge.encryption.allow" in message
    config = load(tmp_path, valid(bridge={"instance": "bridge-1", "cluster": {"enabled": True}}))
    config.validate()
    assert config["bridge.encryption.allow"] is True


@pytest.mark.parametrize("value", ["has space", "x" * 41, "évé", 5, ["a"]])
def test_invalid_instance_names_its_key(tmp_path, value):
    assert_invalid(tmp_path, valid(bridge={"instance": value}), "bridge.instance")


@pytest.mark.parametrize("value", [0, -1, 5000, 2.5, "many", True])
def test_invalid_partitions_name_their_key(tmp_path, value):
    message = assert_invalid(tmp_path, valid(bridge={"cluster": {"partitions": value}}),
                             "bridge.cluster.partitions")
    assert repr(value) in message


def test_each_log_line_names_the_process(tmp_path, capsys):
    config = load(tmp_path, valid(bridge={**PLAIN, "instance": "bridge-3",
                                          "cluster": {"enabled": True}}))
    config.validate()
    root = logging.getLogger()
    before = list(root.handlers)
    root.handlers.clear()
    try:
        setup_logging(config)
        logging.getLogger("bridge.test").warning("hello")
    finally:
        root.handlers[:] = before
    assert "[bridge-3] bridge.test: hello" in capsys.readouterr().err
