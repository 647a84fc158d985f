"""bridge.questions.max_length: its default from the example, and bad values named."""
from __future__ import annotations

import pytest

from tests.unit.test_config import assert_invalid, load, valid


def test_question_length_default_and_override(tmp_path):
    config = load(tmp_path, valid())
    config.validate()
    assert config["bridge.questions.max_length"] == 300
    config = load(tmp_path, valid(bridge={"questions": {"max_length": 80}}))
    config.validate()
    assert config["bridge.questions.max_length"] == 80


@pytest.mark.parametrize("value", [0, -3, 2001, 12.5, "long", True])
def test_invalid_question_length_names_its_key(tmp_path, value):
    message = assert_invalid(tmp_path, valid(bridge={"questions": {"max_length": value}}),
                             "bridge.questions.max_length")
    assert repr(value) in message
