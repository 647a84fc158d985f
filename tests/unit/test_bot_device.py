"""The bot's device per process (crypto.bot_account_id, bot_device_name) and its stored
cross-signing seeds: packed, sealed with the pickle key, opened only with that key."""
from __future__ import annotations

import json

import pytest
from mautrix.crypto.cross_signing_key import CrossSigningSeeds

from bridge.config import ConfigError
from bridge.encryption.cross_signing import pack, unpack
from bridge.encryption.crypto import DEVICE_NAME, bot_account_id, bot_device_name
from bridge.encryption.pickle_key import seal, unseal
from tests.unit.test_config import load, valid

KEY = "the-pickle-key-0123456789"


def config_for(tmp_path, **bridge):
    config = load(tmp_path, valid(bridge=bridge))
    config.validate()
    return config


def in_cluster(config, instance: str):
    # (config.py still refuses encryption in cluster mode: set after validation, as the
    # cluster's own change will allow.)
    config["bridge.cluster.enabled"] = True
    config["bridge.instance"] = instance
    return config


def test_one_process_keeps_the_bots_id_and_its_device(tmp_path):
    config = config_for(tmp_path, instance="bridge-1")
    assert bot_account_id(config) == config.bot_mxid
    assert bot_device_name(config) == DEVICE_NAME


def test_a_cluster_has_a_device_per_instance(tmp_path):
    one = in_cluster(config_for(tmp_path), "bridge-1")
    assert bot_account_id(one) == f"{one.bot_mxid}/bridge-1"
    assert bot_device_name(one) == f"{DEVICE_NAME} (bridge-1)"
    two = in_cluster(config_for(tmp_path), "bridge-2")
    assert bot_account_id(two) != bot_account_id(one)


def test_a_cluster_needs_a_stable_instance_name(tmp_path):
    config = in_cluster(config_for(tmp_path), "")
    with pytest.raises(ConfigError, match="bridge.instance"):
        bot_account_id(config)


def test_seeds_pack_and_unpack():
    seeds = CrossSigningSeeds.generate()
    assert unpack(pack(seeds)) == seeds
    with pytest.raises(ValueError, match="96 bytes"):
        unpack(pack(seeds)[:-1])


def test_a_seal_opens_with_its_key_only():
    secret = pack(CrossSigningSeeds.generate())
    sealed = seal(secret, KEY)
    assert unseal(sealed, KEY) == secret
    assert unseal(sealed, KEY + "x") is None
    assert seal(secret, KEY) != sealed  # a fresh IV each time
    assert secret.hex() not in sealed


@pytest.mark.parametrize("field", ["ciphertext", "mac"])
def test_a_tampered_seal_does_not_open(field):
    sealed = json.loads(seal(b"s" * 96, KEY))
    sealed[field] = ("A" if sealed[field][0] != "A" else "B") + sealed[field][1:]
    assert unseal(json.dumps(sealed), KEY) is None


@pytest.mark.parametrize("text", ["", "not json", "{}", "[1]",
                                  '{"ciphertext": 1, "iv": "", "mac": ""}'])
def test_garbage_is_not_a_seal(text):
    assert unseal(text, KEY) is None
