"""!start with interests, !interests, !lang and !status: the replies users get (recorded by
key and rendered), over real PostgreSQL."""
from __future__ import annotations

import pytest

from bridge.i18n import messages
from bridge.commands import Commands, Parsed
from bridge.matching import queue
from bridge.store import users
from tests.integration.test_pairing import config, live_partner, setup  # noqa: F401 (fixtures)


@pytest.fixture
async def commands(pool, setup):
    return Commands(pool, setup[0])


async def agreed(pool, name: str) -> str:
    user_id = f"@{name}:example.org"
    await users.ensure(pool, user_id)
    await users.agree(pool, user_id)
    return user_id


async def say(commands: Commands, user_id: str, text: str) -> tuple[str, str]:
    """Run a command as the handler does; (reply key, the rendered reply)."""
    name, _, args = text.partition(" ")
    reply = await commands.run(user_id, Parsed(name.lstrip("!").lower(), args.strip()))
    return reply.key, messages.text(reply.key, prefix="!", command=name, **reply.values)


async def test_interests_show_set_and_clear(pool, commands):
    ann = await agreed(pool, "ann")
    assert (await say(commands, ann, "!interests"))[0] == "interests_none"
    key, text = await say(commands, ann, "!interests Cinéma,  JAZZ , cinema")
    assert key == "interests_set"
    assert text == "Your interests: cinema, jazz. They apply from your next !start."
    assert await users.preferences(pool, ann) == (("cinema", "jazz"), None)
    assert (await say(commands, ann, "!interests"))[1].startswith("Your interests: cinema, jazz.")
    key, text = await say(commands, ann, "!interests clear")
    assert key == "interests_cleared"
    assert await users.preferences(pool, ann) == ((), None)


async def test_interest_limits_are_named_and_nothing_changes(pool, commands):
    ann = await agreed(pool, "ann")
    await say(commands, ann, "!interests chess")
    key, text = await say(commands, ann, "!interests a, b, c, d, e, f")
    assert key == "tags_too_many" and "at most 5 interests" in text
    key, text = await say(commands, ann, "!interests " + "x" * 31)
    assert key == "tag_too_long" and "at most 30 characters" in text
    assert await users.preferences(pool, ann) == (("chess",), None)
    key, _ = await say(commands, ann, "!start a, b, c, d, e, f")
    assert key == "tags_too_many" and not await queue.is_waiting(pool, ann)


async def test_lang_show_set_refuse_and_clear(pool, commands):
    ann = await agreed(pool, "ann")
    assert (await say(commands, ann, "!lang"))[0] == "lang_none"
    key, text = await say(commands, ann, "!lang FR-ca")
    assert (key, text) == ("lang_set", "Your language: fr. I'll talk to you in it from now on. "
                                       "They apply from your next !start.")
    assert (await say(commands, ann, "!lang"))[1].startswith("Your language: fr.")
    key, text = await say(commands, ann, "!lang klingon")
    assert key == "lang_invalid" and "klingon is not a language code" in text
    assert await users.preferences(pool, ann) == ((), "fr")
    assert (await say(commands, ann, "!lang clear"))[0] == "lang_cleared"
    assert await users.preferences(pool, ann) == ((), None)


async def test_start_with_interests_queues_saying_what_it_looks_for(pool, commands):
    ann = await agreed(pool, "ann")
    await say(commands, ann, "!lang de")
    key, text = await say(commands, ann, "!start Chess, go")
    assert key == "queued_with_preferences"
    assert text.startswith("Looking for a stranger who likes chess or go and speaks de…")
    assert "within 10 seconds" in text
    # Interests are kept: a later plain !start uses them.
    assert await users.preferences(pool, ann) == (("chess", "go"), "de")
    # Changing them while waiting applies at once.
    key, text = await say(commands, ann, "!start tea")
    assert key == "interests_set"
    assert text.endswith("I'm looking for someone who matches from now on.")
    assert await pool.fetchval("SELECT tags FROM waiting WHERE user_id = $1", ann) == ["tea"]
    assert (await say(commands, ann, "!start"))[0] == "already_waiting"
    bob = await agreed(pool, "bob")
    key, _ = await say(commands, bob, "!interests tea")
    assert key == "interests_set"
    assert (await say(commands, bob, "!start"))[0] == "queued_with_preferences"
    assert await live_partner(pool, ann) is None  # ann wants German
    key, text = await say(commands, ann, "!lang clear")
    assert text.endswith("I'm looking for someone who matches from now on.")
    assert await live_partner(pool, ann) == bob


async def test_plain_start_without_preferences(pool, commands):
    ann = await agreed(pool, "ann")
    assert (await say(commands, ann, "!start"))[1].startswith("Looking for a stranger…")


async def test_status_idle_waiting_chatting(pool, commands):
    ann, bob, cat = (await agreed(pool, "ann"), await agreed(pool, "bob"),
                     await agreed(pool, "cat"))
    key, text = await say(commands, ann, "!status")
    assert key == "status_idle"
    assert "Right now: 0 waiting, 0 chatting." in text
    await say(commands, ann, "!interests cats")
    await say(commands, ann, "!start")
    key, text = await say(commands, ann, "!status")
    assert key == "status_waiting"
    assert text.startswith("You have been waiting for a stranger for 0 s. Your interests: cats.")
    assert text.endswith("Right now: 1 waiting, 0 chatting.")
    await say(commands, bob, "!start cats")
    await say(commands, cat, "!start")
    key, text = await say(commands, bob, "!status")
    assert key == "status_chatting" and text.startswith("You have been in a chat for ")
    assert text.endswith("Right now: 1 waiting, 2 chatting.")


async def test_preference_commands_need_agreement(pool, commands):
    await users.ensure(pool, "@new:example.org")
    for text in ("!interests jazz", "!lang fr", "!status", "!start jazz"):
        assert (await say(commands, "@new:example.org", text))[0] == "must_agree"
    assert await users.preferences(pool, "@new:example.org") == ((), None)


async def test_help_lists_the_new_commands(pool, commands):
    _, text = await say(commands, "@anyone:example.org", "!help")
    for command in ("!interests", "!lang", "!status", "!start cinema, jazz"):
        assert command in text
