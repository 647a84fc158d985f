"""The capacity model's arithmetic (bench/capacity_model.py), on made-up costs."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "capacity_model", Path(__file__).resolve().parents[2] / "bench" / "capacity_model.py")
capacity_model = importlib.util.module_from_spec(_SPEC)
sys.modules["capacity_model"] = capacity_model  # (dataclasses look their module up)
_SPEC.loader.exec_module(capacity_model)


def figures(conv_ms: float, msg_ms: float, groups: list[str]) -> dict:
    stat = lambda v: {"median": v, "p95": 2 * v}  # noqa: E731
    return {"per_conversation_ms": {g: stat(conv_ms) for g in groups},
            "per_message_ms": {g: stat(msg_ms) for g in groups}}


def test_rates():
    a = capacity_model.Assumptions(messages_per_minute=2, minutes=4, chatting=0.9)
    conv, msg = a.rates(10_000)
    assert conv == pytest.approx(9000 / 2 / 240)  # 18.75 conversations start each second
    assert msg == pytest.approx(9000 * 2 / 60)  # 300 messages each second


def test_cores_and_saturation():
    a = capacity_model.Assumptions(messages_per_minute=2, minutes=4, chatting=0.9)
    # 100 ms per conversation and 10 ms per message: at 10,000 users,
    # 18.75 * 0.1 + 300 * 0.01 = 4.875 cores (twice that at the p95 costs).
    result = capacity_model.model([figures(100, 10, ["bridge", "hs1.appservice1"])], a, [10_000])
    assert result["users"][10_000]["cores"]["bridge"] == {"median": 4.88, "p95": 9.75}
    # Parts with no measured group are left out, not counted as free.
    assert result["users"][10_000]["cores"]["bridge PostgreSQL"] == {}
    # One core is reached at 10,000 / 4.875 users.
    assert result["one_core_reached_at_users"]["one bridge process"] == {
        "median": int(10_000 / 4.875), "p95": int(10_000 / 9.75)}
    assert "Synapse main process" not in result["one_core_reached_at_users"]
