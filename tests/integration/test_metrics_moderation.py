"""Moderation moves its metrics, through the whole bridge in process (fake homeserver, real
PostgreSQL): a report, a moderator's ban, a server ban; and each ending counts by cause."""
from __future__ import annotations

import pytest

from bridge.metrics.definitions import REGISTRY
from tests.integration.test_moderation_flow import mod_says, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:loop argument is deprecated:DeprecationWarning")


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_reports_and_sanctions_are_counted(world):  # noqa: F811
    reports = value("stranger_bridge_reports_total")
    reported = value("stranger_bridge_conversation_endings_total", reason="reported")
    restricted = value("stranger_bridge_conversation_endings_total", reason="restricted")
    bans = value("stranger_bridge_sanctions_total", kind="banned", source="moderator")
    server_bans = value("stranger_bridge_sanctions_total", kind="server_banned",
                        source="moderator")
    matches = value("stranger_bridge_matches_total")

    ann, bob = await world.pair("ann", "bob")
    await ann.command("!stop", "ended")
    await world.quiesce()
    await ann.command("!report spam", "report was received")
    assert value("stranger_bridge_reports_total") == reports + 1
    # (!stop ended that chat; the report of it ends nothing more.)
    assert value("stranger_bridge_conversation_endings_total", reason="reported") == reported

    cat, dan = await world.pair("cat", "dan")
    await mod_says(world, f"!ban {dan.user_id} forever threats", "is banned")
    await world.quiesce()
    assert value("stranger_bridge_sanctions_total", kind="banned", source="moderator") == bans + 1
    assert value("stranger_bridge_conversation_endings_total",
                 reason="restricted") == restricted + 1
    await mod_says(world, "!banserver bad.example spam server", "bad.example is banned")
    assert value("stranger_bridge_sanctions_total", kind="server_banned",
                 source="moderator") == server_bans + 1
    assert value("stranger_bridge_matches_total") >= matches + 2
