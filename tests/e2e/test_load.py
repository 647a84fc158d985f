"""Load, small: real users on both homeservers churn through the real bridge (agree, start,
accept, chat, leave / !next / !stop, again) for about a minute; no errors anywhere, no
message relayed twice, and once everyone stops, every room and conversation the bridge
made is cleaned up (database, the ghosts' joined rooms, the rooms ghosts created). The
bridge's memory is sampled and printed (its bounds are bench/load.py's figures, with the
200-user, several-minute run).
"""
from __future__ import annotations

import os
import uuid

import pytest
import pytest_asyncio

from bridge.lab.bridge_process import NO_RATE_LIMITS
from bridge.lab.bridged import start_bridged_lab
from bridge.lab.inprocess import existing_keys
from bridge.lab.load import load_run, ready_users
from tests.conftest import ADMIN_DSN

pytestmark = pytest.mark.e2e

USERS = int(os.environ.get("STRANGER_LOAD_USERS", "20"))
SECONDS = float(os.environ.get("STRANGER_LOAD_SECONDS", "45"))


@pytest_asyncio.fixture(scope="module")
async def loadlab(tmp_path_factory):
    name = f"stranger_load_{uuid.uuid4().hex[:8]}"
    lab = await start_bridged_lab(tmp_path_factory.mktemp("load"), ADMIN_DSN, name,
                                  **{"logging.level": "INFO", "bridge.invite_timeout": 20},
                                  # Few users: let them meet again (the product waits 300 s).
                                  **existing_keys({"bridge.matching.rematch_cooldown": 0,
                                                   **NO_RATE_LIMITS}))
    try:
        yield lab
    finally:
        await lab.shutdown(ADMIN_DSN)


async def test_churn_under_load_leaves_nothing_behind(loadlab):
    users = await ready_users(loadlab, USERS)
    report = await load_run(loadlab, users, seconds=SECONDS, message_interval=4.0)
    print("\n" + report.summary())
    stats = report.stats
    assert stats.errors == []
    assert report.bridge_errors == []
    assert stats.duplicates == 0
    # (How many: a throughput, bench/load.py's figure; here only that the load happened.)
    assert stats.conversations > 0
    assert stats.received > 0 and stats.received <= stats.sent
    assert report.live_conversations_left == 0
    assert report.sides_not_cleaned_up == 0
    assert report.unhandled_inbox == 0
    assert report.ghosts_still_in_rooms == 0
    assert report.orphan_rooms == []
    assert report.rooms_created_by_ghosts > 0
