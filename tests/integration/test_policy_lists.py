"""Policy-list rules in PostgreSQL (set, replaced, lifted by an empty or redacted event, legacy
types), the restriction they put on users, and what happens to a user a new rule restricts:
their chat ends as after a leave, they leave the queue, !start and !next say why."""
from __future__ import annotations

from datetime import datetime, timezone


import pytest

from bridge.i18n import messages
from bridge.matching import queue
from bridge.moderation import policy_lists
from bridge.moderation.enforcement import Enforcer
from bridge.moderation.restrictions import restriction_of
from bridge.moderation.policy_lists import apply_state, lift_redacted, policy_restriction
from bridge.portal import RESTRICTED
from bridge.store import conversations
from tests.integration.moderation_world import agreed, moderation_world, say
from tests.integration.test_pairing import FakePortal, config, live_partner  # noqa: F401

ROOM = "!policy:lists.example"


def rule_event(kind: str, entity: str | None, *, key: str | None = None, event_id: str = "$r1",
               reason: str = "spam", recommendation: str = "m.ban",
               event_type: str | None = None) -> dict:
    content = {} if entity is None else {"entity": entity, "reason": reason,
                                         "recommendation": recommendation}
    return {"room_id": ROOM, "type": event_type or f"m.policy.rule.{kind}",
            "state_key": key if key is not None else f"rule:{entity}", "content": content,
            "event_id": event_id, "sender": "@mod:lists.example"}


@pytest.fixture
async def policy_room(pool):
    await policy_lists.set_rooms(pool, {ROOM: "#bans:lists.example"})
    return ROOM


async def test_a_user_rule_bans_that_user_only(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@spammer:evil.example", reason="spam bot"))
    restriction = await policy_restriction(pool, config, "@spammer:evil.example")
    assert (restriction.kind, restriction.reason, restriction.until, restriction.source) == (
        "banned", "spam bot", None, "policy_list")
    assert await policy_restriction(pool, config, "@other:evil.example") is None
    assert await policy_restriction(pool, config, "@Spammer:evil.example") is None


async def test_user_and_server_globs(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@bot*:*", event_id="$a"))
    await apply_state(pool, rule_event("server", "*.evil.example", event_id="$b",
                                       reason="abuse"))
    assert (await policy_restriction(pool, config, "@bot42:good.example")).kind == "banned"
    server_ban = await policy_restriction(pool, config, "@ann:chat.evil.example:8448")
    assert (server_ban.kind, server_ban.reason) == ("server_banned", "abuse")
    assert await policy_restriction(pool, config, "@ann:evil.example") is None


async def test_a_server_rule_ignores_the_port_unless_it_names_one(pool, config, policy_room):
    await apply_state(pool, rule_event("server", "localhost:8449", event_id="$a"))
    await apply_state(pool, rule_event("server", "evil.example", event_id="$b"))
    assert await policy_restriction(pool, config, "@x:localhost:8449") is not None
    assert await policy_restriction(pool, config, "@x:localhost:8448") is None
    assert await policy_restriction(pool, config, "@x:evil.example:8448") is not None
    assert await policy_restriction(pool, config, "@x:EVIL.example") is not None


async def test_an_empty_state_event_lifts_the_rule(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@x:evil.example", key="k"))
    assert await policy_restriction(pool, config, "@x:evil.example") is not None
    assert await apply_state(pool, rule_event("user", None, key="k", event_id="$r2")) is None
    assert await policy_restriction(pool, config, "@x:evil.example") is None


async def test_a_redacted_rule_is_lifted(pool, config, policy_room):
    await apply_state(pool, rule_event("server", "evil.example", event_id="$ban"))
    assert await lift_redacted(pool, ROOM, "$other") is False
    assert await policy_restriction(pool, config, "@x:evil.example") is not None
    assert await lift_redacted(pool, ROOM, "$ban") is True
    assert await policy_restriction(pool, config, "@x:evil.example") is None


async def test_a_newer_rule_at_the_same_key_replaces_it(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@a:evil.example", key="k"))
    await apply_state(pool, rule_event("user", "@b:evil.example", key="k", event_id="$r2"))
    assert await policy_restriction(pool, config, "@a:evil.example") is None
    assert await policy_restriction(pool, config, "@b:evil.example") is not None


async def test_only_ban_recommendations_count(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@a:evil.example", key="k"))
    await apply_state(pool, rule_event("user", "@a:evil.example", key="k", event_id="$r2",
                                       recommendation="org.example.watch"))
    assert await policy_restriction(pool, config, "@a:evil.example") is None


@pytest.mark.parametrize("event_type, recommendation", [
    ("m.room.rule.user", "m.ban"), ("org.matrix.mjolnir.rule.user", "org.matrix.mjolnir.ban"),
])
def test_legacy_rule_types_are_read(event_type, recommendation):
    rule = policy_lists.parse_rule(rule_event("user", "@a:x", event_type=event_type,
                                              recommendation=recommendation))
    assert rule is not None and rule.kind == "user"


async def test_rules_of_rooms_no_longer_followed_go(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@a:evil.example"))
    await policy_lists.set_rooms(pool, {"!other:lists.example": "!other:lists.example"})
    assert await policy_restriction(pool, config, "@a:evil.example") is None


async def test_reading_a_room_again_replaces_its_rules(pool, config, policy_room):
    await apply_state(pool, rule_event("user", "@a:evil.example", key="a"))
    rule = policy_lists.parse_rule(rule_event("user", "@b:evil.example", key="b"))
    await policy_lists.replace_rules(pool, ROOM, [rule])
    assert await policy_restriction(pool, config, "@a:evil.example") is None
    assert await policy_restriction(pool, config, "@b:evil.example") is not None


async def test_config_server_lists_restrict_too(pool, config):
    config["bridge.denied_servers"] = ["bad.example"]
    restriction = await restriction_of(pool, config, "@x:bad.example", datetime.now(timezone.utc))
    assert (restriction.kind, restriction.source) == ("server_not_allowed", "config")
    assert await restriction_of(pool, config, "@x:good.example", datetime.now(timezone.utc)) is None
    config["bridge.denied_servers"] = []
    config["bridge.allowed_servers"] = ["adults.example"]
    assert await restriction_of(pool, config, "@x:good.example", datetime.now(timezone.utc)) is not None
    assert await restriction_of(pool, config, "@x:adults.example:8448", datetime.now(timezone.utc)) is None


# -- stopping restricted users ------------------------------------------------------------------


@pytest.fixture
async def world(pool, config, policy_room):
    async with moderation_world(pool, config, FakePortal()) as w:
        yield w.pairing, Enforcer(pool, config, w.pairing, w.notify_dm), w.commands, w.told


async def test_a_new_server_rule_ends_live_chats_and_empties_the_queue(pool, world):
    pairing, enforcer, commands, told = world
    ann, bob, cat = "@ann:good.example", "@bob:hs2.example:8449", "@cat:hs2.example:8449"
    await agreed(pool, ann, bob, cat)
    for user_id in (ann, bob, cat):
        await say(commands, user_id, "!start")
    conv_id = (await conversations.live_side_of(pool, ann)).conversation_id
    assert await live_partner(pool, ann) == bob and await queue.is_waiting(pool, cat)

    rule = await apply_state(pool, rule_event("server", "hs2.example:8449", reason="no minors"))
    assert sorted(await enforcer.after_rule(rule)) == [bob, cat]

    conv = await conversations.get(pool, conv_id)
    # Ended by bob (the portal then tells ann "Stranger has disconnected.", as after a leave);
    # ann is not queued again behind her back.
    assert (conv.state, conv.end_reason, conv.ended_by) == ("ended", RESTRICTED, bob)
    assert not await queue.is_waiting(pool, cat) and not await queue.is_waiting(pool, ann)
    assert [(u, k) for u, k, _ in told] == [(bob, "restricted_chat_ended"), (cat, "restricted")]
    text = messages.text("restricted", prefix="!", **told[1][2])
    assert "your homeserver is banned" in text and "no minors" in text and "permanently" in text
    assert "follows a ban list" in text
    assert all(ann != u for u, _, _ in told)


async def test_start_and_next_are_refused_with_the_reasons_until_lifted(pool, world):
    _, _, commands, _ = world
    bob = "@bob:evil.example"
    await agreed(pool, bob)
    await apply_state(pool, rule_event("user", bob, key="k", reason="harassment"))
    for command in ("!start", "!next", "!start cinema"):
        key, text, _ = await say(commands, bob, command)
        assert key == "restricted"
        assert text == ("You can't chat here: your account is banned permanently.\n"
                        "Reason: harassment\nThis follows a ban list this bridge subscribes to.\n"
                        "If you think this is wrong, you can ask the operator of this bridge to "
                        "review it.")
    assert not await queue.is_waiting(pool, bob)
    await apply_state(pool, rule_event("user", None, key="k", event_id="$lift"))
    assert (await say(commands, bob, "!start"))[0] == "queued"


async def test_next_by_a_restricted_user_in_a_chat_ends_it_without_requeueing(pool, world):
    _, _, commands, _ = world
    ann, bob = "@ann:good.example", "@bob:evil.example"
    await agreed(pool, ann, bob)
    await say(commands, ann, "!start")
    await say(commands, bob, "!start")
    conv_id = (await conversations.live_side_of(pool, bob)).conversation_id
    await apply_state(pool, rule_event("server", "evil.example"))
    assert (await say(commands, bob, "!next"))[0] == "restricted"
    conv = await conversations.get(pool, conv_id)
    assert (conv.end_reason, conv.ended_by) == (RESTRICTED, bob)
    assert not await queue.is_waiting(pool, bob)


async def test_enforce_all_stops_whoever_the_current_rules_restrict(pool, world, config):
    _, enforcer, commands, told = world
    ann, bob = "@ann:good.example", "@bob:bad.example"
    await agreed(pool, ann, bob)
    await say(commands, bob, "!start")
    config["bridge.denied_servers"] = ["bad.example"]  # as after a restart with a new config
    assert await enforcer.enforce_all() == [bob]
    assert not await queue.is_waiting(pool, bob)
    assert told[0][1] == "restricted"
    assert "your homeserver is not allowed on this bridge" in messages.text("restricted",
                                                                           **told[0][2])
