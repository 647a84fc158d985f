"""bridge.default_language: one of the shipped catalogs, English unless set."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_default_language_is_english(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.default_language"] == "en"


@pytest.mark.parametrize("language", ["fr", "id", "ar", "en"])
def test_any_shipped_catalog_may_be_the_default(tmp_path, language):
    config = load(tmp_path, valid(bridge={"default_language": language}))
    config.validate()
    assert config["bridge.default_language"] == language


@pytest.mark.parametrize("bad", ["de", "FR", "french", "", 3])
def test_a_language_without_a_catalog_is_refused_naming_the_key(tmp_path, bad):
    message = assert_invalid(tmp_path, valid(bridge={"default_language": bad}),
                             "bridge.default_language")
    assert "(en, ar, fr, id)" in message
