"""Decrypting and encrypting relayed messages (bridge/encryption/crypto.py) on a real crypto store in
PostgreSQL: what making them cheaper (caches, fewer and later writes) must not change. No
homeserver: bridge/lab/cryptopair.py hands keys over directly, and any HTTP request fails
the test."""
from __future__ import annotations

import asyncio
import json

import olm
import pytest
from mautrix.crypto import PgCryptoStore
from mautrix.errors import EncryptionError
from mautrix.types import EventType, TrustState

from bridge.encryption import olm as bridge_olm
from bridge.encryption.crypto import Undecryptable
from bridge.lab import cryptopair as cp
from bridge.state_store import TrimmedStateStore


@pytest.fixture
async def lab(tmp_path, database_uri):
    """Config, crypto database and state store; `receive` level set per test with lab.config."""
    labs = []

    async def make(receive: str = "unverified"):
        config = cp.make_config(tmp_path, database_uri, **{
            "bridge.encryption.verification_levels.receive": receive})
        db = await cp.open_crypto_db(config, count=True)
        lab = Lab(config, db)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        await lab.db.stop()


class Lab:
    def __init__(self, config, db) -> None:
        self.config, self.db = config, db
        self.state_store = TrimmedStateStore()

    async def device(self, user: str):
        return await cp.device(self.config, self.state_store, self.db, user)

    async def pair(self, *, cross_signed: bool = True, share: bool = True):
        """A sender (standing for a user's client) and a ghost's device receiving in a room."""
        room = cp.room_id()
        await cp.encrypted_room(self.state_store, room)
        sender = await self.device(cp.user_id("user"))
        receiver = await self.device(cp.user_id("ghost"))
        await cp.learn_device(receiver, sender)
        if cross_signed:
            await cp.cross_sign(receiver, sender)
        key = await cp.share_session(sender, room, *([receiver] if share else []))
        return sender, receiver, room, key


async def send(sender, room: str, body: str, **event) -> dict:
    _, content = await sender.encrypt(room, "m.room.message", cp.text(body))
    return cp.encrypted_event(room, sender.client.mxid, content, **event)


async def ratchet_safety(db, receiver, session_id: str) -> dict:
    value = await db.fetchval(
        "SELECT ratchet_safety FROM crypto_megolm_inbound_session "
        "WHERE account_id=$1 AND session_id=$2", receiver.client.mxid, session_id)
    return json.loads(value)


async def test_a_warm_session_encrypts_and_decrypts_a_relayed_message(lab):
    """(Its cost, one PostgreSQL round trip each way, is measured by bench/crypto.py.)"""
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    for i in range(3):  # the first message reads the session and the device keys
        event = await send(sender, room, f"warm {i}")
        assert (await receiver.decrypt(event))["content"]["body"] == f"warm {i}"
    _, content = await sender.encrypt(room, "m.room.message", cp.text("hello"))
    decrypted = await receiver.decrypt(cp.encrypted_event(room, sender.client.mxid, content))
    assert decrypted["type"] == "m.room.message"
    assert decrypted["content"] == cp.text("hello")
    assert decrypted["sender"] == sender.client.mxid


async def test_replayed_index_with_another_event_id_is_refused(lab):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    original = await send(sender, room, "once")
    assert (await receiver.decrypt(original))["content"]["body"] == "once"
    # The same event again (a retried transaction) still decrypts...
    assert (await receiver.decrypt(dict(original)))["content"]["body"] == "once"
    # ...but its ciphertext under another event ID, or another timestamp, is a replay.
    with pytest.raises(Undecryptable, match="DuplicateMessageIndex"):
        await receiver.decrypt({**original, "event_id": "$replayed"})
    with pytest.raises(Undecryptable, match="DuplicateMessageIndex"):
        await receiver.decrypt({**original, "origin_server_ts": original["origin_server_ts"] + 1})
    # Also right after a new message, whose ratchet bookkeeping rides with the next check.
    for i in range(2):
        assert (await receiver.decrypt(await send(sender, room, f"new {i}")))["content"]["body"] \
            == f"new {i}"
        with pytest.raises(Undecryptable, match="DuplicateMessageIndex"):
            await receiver.decrypt({**original, "event_id": f"$replayed-{i}"})
    # Also once the cache is cold: a restarted device on the same store.
    await receiver.stop()
    restarted = await lab.device(receiver.client.mxid)
    assert restarted.client.device_id == receiver.client.device_id
    with pytest.raises(Undecryptable, match="DuplicateMessageIndex"):
        await restarted.decrypt({**original, "event_id": "$replayed-after-restart"})
    assert (await restarted.decrypt(dict(original)))["content"]["body"] == "once"


@pytest.mark.parametrize("clean_stop", [True, False], ids=["stopped", "crashed"])
async def test_decrypts_after_restart(lab, clean_stop):
    lab = await lab()
    sender, receiver, room, key = await lab.pair()
    for i in range(5):
        assert (await receiver.decrypt(await send(sender, room, f"m{i}")))["content"]["body"] \
            == f"m{i}"
    if clean_stop:
        await receiver.stop()  # writes the held-back ratchet bookkeeping
        assert (await ratchet_safety(lab.db, receiver, key.session_id))["next_index"] == 5
    else:
        # No stop: at most the last message's bookkeeping may be lost (if held back to be
        # written with the next message), never the message index.
        assert (await ratchet_safety(lab.db, receiver, key.session_id))["next_index"] in (4, 5)
    restarted = await lab.device(receiver.client.mxid)
    early = await send(sender, room, "after restart")
    assert (await restarted.decrypt(early))["content"]["body"] == "after restart"
    assert (await restarted.decrypt(await send(sender, room, "again")))["content"]["body"] \
        == "again"
    await restarted.stop()
    assert (await ratchet_safety(lab.db, receiver, key.session_id))["next_index"] == 7


async def test_session_received_later(lab):
    lab = await lab()
    sender, receiver, room, key = await lab.pair(share=False)
    event = await send(sender, room, "early")
    waiting = asyncio.create_task(receiver.decrypt(event, timeout=10))
    await asyncio.sleep(0.2)
    assert not waiting.done()  # waiting for the key, nothing cached for its absence
    await cp.give_key(receiver, sender, key)
    decrypted = await asyncio.wait_for(waiting, 5)
    assert decrypted["content"]["body"] == "early"
    # A key that never comes: None after the timeout, then decrypts once it arrives.
    other_room = cp.room_id()
    await cp.encrypted_room(lab.state_store, other_room)
    other_key = await cp.share_session(sender, other_room)
    late = await send(sender, other_room, "late")
    assert await receiver.decrypt(late, timeout=0.1) is None
    await cp.give_key(receiver, sender, other_key)
    assert (await receiver.decrypt(late))["content"]["body"] == "late"


async def test_trust_below_the_minimum_is_refused(lab):
    tofu = await lab("cross-signed-tofu")
    sender, receiver, room, _ = await tofu.pair(cross_signed=False)
    # Not cross-signed: mautrix asks the homeserver for the user's keys once, then it is
    # UNVERIFIED. Here that request fails (cryptopair); say it was made.
    receiver.machine._cs_fetch_attempted.add(sender.client.mxid)
    with pytest.raises(Undecryptable, match="below the configured minimum"):
        await receiver.decrypt(await send(sender, room, "unsigned"))
    # Cross-signed now: resolved in full, and read.
    await cp.cross_sign(receiver, sender)
    assert (await receiver.decrypt(await send(sender, room, "signed")))["content"]["body"] \
        == "signed"


async def test_blacklisted_device_is_refused_at_the_lowest_minimum(lab):
    lab = await lab("unverified")
    sender, receiver, room, _ = await lab.pair(cross_signed=False)
    assert (await receiver.decrypt(await send(sender, room, "fine")))["content"]["body"] \
        == "fine"
    await cp.learn_device(receiver, sender, trust=TrustState.BLACKLISTED)
    with pytest.raises(Undecryptable, match="below the configured minimum"):
        await receiver.decrypt(await send(sender, room, "blacklisted"))


async def test_device_key_mismatch_raises_verification_error(lab):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    assert (await receiver.decrypt(await send(sender, room, "ok")))["content"]["body"] == "ok"
    # The sender's device keys change (stored again, as after a /keys/query): the cached
    # device must not hide it. Same identity key, another signing key than the session's.
    impostor = cp.identity(sender)
    impostor.signing_key = olm.PkSigning(olm.PkSigning.generate_seed()).public_key
    await receiver.store.put_devices(sender.client.mxid, {sender.client.device_id: impostor})
    with pytest.raises(Undecryptable, match="VerificationError"):
        await receiver.decrypt(await send(sender, room, "mismatch"))


async def test_redacted_session_no_longer_decrypts(lab):
    lab = await lab()
    sender, receiver, room, key = await lab.pair()
    assert (await receiver.decrypt(await send(sender, room, "a")))["content"]["body"] == "a"
    await receiver.store.redact_group_session(room, key.session_id, reason="test")
    with pytest.raises(Undecryptable, match="GroupSessionWithheldError"):
        await receiver.decrypt(await send(sender, room, "b"))


async def test_session_of_another_room_is_not_used(lab):
    lab = await lab()
    sender, receiver, room, key = await lab.pair()
    event = await send(sender, room, "here")
    assert (await receiver.decrypt(event))["content"]["body"] == "here"  # cached now
    elsewhere = {**(await send(sender, room, "there")), "room_id": cp.room_id()}
    assert await receiver.decrypt(elsewhere, timeout=0.05) is None


async def test_encrypting_after_restart_never_reuses_an_index(lab):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    for i in range(3):
        await receiver.decrypt(await send(sender, room, f"before {i}"))
    # A crash right after sending: no stop, the next process reads the stored session.
    restarted = await lab.device(sender.client.mxid)
    for i in range(3):  # a reused index would be refused as a replay
        assert (await receiver.decrypt(await send(restarted, room, f"after {i}"))
                )["content"]["body"] == f"after {i}"


async def test_removed_outbound_session_is_not_used(lab):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    await send(sender, room, "cached")
    # A member left or a device changed: mautrix drops the room's session so a new one is
    # shared; the cached copy must go with it.
    await sender.store.remove_outbound_group_session(room)
    with pytest.raises(EncryptionError):
        await sender.machine.encrypt_megolm_event(room, EventType.ROOM_MESSAGE, cp.text("x"))


async def test_outbound_session_not_stored_is_read_back(lab, monkeypatch):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    await receiver.decrypt(await send(sender, room, "first"))

    async def fail(*args, **kwargs):
        raise OSError("database down")
    monkeypatch.setattr(PgCryptoStore, "update_outbound_group_session", fail)
    with pytest.raises(OSError):
        await send(sender, room, "lost")
    monkeypatch.undo()
    # Read back as stored: the index of the message never sent is used again, harmlessly.
    assert (await receiver.decrypt(await send(sender, room, "second")))["content"]["body"] \
        == "second"


async def test_sessions_leaving_the_cache_keep_their_bookkeeping(lab, monkeypatch):
    monkeypatch.setattr(bridge_olm, "MAX_CACHED_SESSIONS", 1)
    lab = await lab()
    sender, receiver, room, first = await lab.pair()
    other_room = cp.room_id()
    await cp.encrypted_room(lab.state_store, other_room)
    second = await cp.share_session(sender, other_room, receiver)
    for i in range(3):  # each session pushes the other out of the one-entry cache
        for target in (room, other_room):
            event = await send(sender, target, f"{target} {i}")
            assert (await receiver.decrypt(event))["content"]["body"] == f"{target} {i}"
    assert len(receiver.store._inbound) == 1
    # The evicted session's bookkeeping was written as it left; the cached one's on stop.
    assert (await ratchet_safety(lab.db, receiver, first.session_id))["next_index"] == 3
    await receiver.stop()
    assert (await ratchet_safety(lab.db, receiver, second.session_id))["next_index"] == 3


async def test_crypto_pool_still_rolls_back_what_was_left_open(lab):
    # bridge/encryption/olm.py's pool reset skips asyncpg's reset query, not its rollback.
    lab = await lab()
    async with lab.db.pool.acquire() as conn:
        raw = conn._con
        await conn.execute("BEGIN")
        await conn.execute("SELECT 1")
        assert raw.is_in_transaction()
    assert not raw.is_in_transaction()


async def test_device_gone_for_good_leaves_nothing_cached(lab):
    lab = await lab()
    sender, receiver, room, _ = await lab.pair()
    assert (await receiver.decrypt(await send(sender, room, "to ghost")))["content"]["body"] \
        == "to ghost"
    # The other way too, so the sender's side caches the ghost's device keys.
    await cp.learn_device(sender, receiver)
    await cp.share_session(receiver, room, sender)
    assert (await sender.decrypt(await send(receiver, room, "from ghost")))["content"]["body"] \
        == "from ghost"
    assert receiver.client.mxid in sender.store._devices.users
    # The conversation ends: its device is deleted (the homeserver is not reachable here,
    # which stop() logs and goes on), and its rows with it, behind the stores' backs.
    await receiver.stop(forget=True)
    assert not await lab.db.fetchval("SELECT count(*) FROM crypto_device WHERE user_id=$1",
                                     receiver.client.mxid)
    assert receiver.client.mxid not in sender.store._devices.users
    assert not receiver.store._inbound and not receiver.store._outbound
