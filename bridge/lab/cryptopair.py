"""Encryption devices in one process, with no homeserver: the bridge's own Crypto objects on a
real PostgreSQL crypto store (mautrix's PgCryptoStore, migrated by mautrix as in the bridge).

What a homeserver would carry is handed over directly instead: the sender's device keys (as
a /keys/query answer would store them), its cross-signing keys and signatures, and the room
key (what mautrix does on receiving an m.room_key to-device message). Any HTTP request raises
UnexpectedRequest: nothing on the measured path (decrypt, encrypt with a shared session)
should need the homeserver.

Used by the crypto micro-benchmark (bench/crypto.py) and the crypto integration tests.
"""
from __future__ import annotations

import time
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import olm
from mautrix.types import (CrossSigner, CrossSigningUsage, DeviceIdentity, EncryptionAlgorithm,
                           RoomEncryptionStateEventContent, TrustState)
from mautrix.util.async_db import Database

from bridge.config import Config
from bridge.encryption.crypto import Crypto
from bridge.encryption.crypto_store import crypto_database
from bridge.lab.bridge_process import write_config
from bridge.state_store import TrimmedStateStore

DOMAIN = "crypto.invalid"


class UnexpectedRequest(AssertionError):
    """The crypto code tried to reach the homeserver where it should not need to."""


async def _refuse(method, path, *args, **kwargs):
    raise UnexpectedRequest(f"unexpected HTTP request: {method} {path}")


class CountingConnection(asyncpg.Connection):
    """Counts round trips to PostgreSQL: every query, statement preparation and COPY, and the
    pool's reset on release (also a query)."""

    _live: "weakref.WeakSet[CountingConnection]" = weakref.WeakSet()
    extra = 0  # round trips asyncpg's own counter misses: prepares and COPYs

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        CountingConnection._live.add(self)

    async def _get_statement(self, query, timeout, *, named=False, use_cache=True,
                             ignore_custom_codec=False, record_class=None):
        key = (query, record_class or self._protocol.get_record_class(), ignore_custom_codec)
        if not use_cache or self._stmt_cache.get(key) is None:
            CountingConnection.extra += 1
        return await super()._get_statement(
            query, timeout, named=named, use_cache=use_cache,
            ignore_custom_codec=ignore_custom_codec, record_class=record_class)

    async def _copy_in_records(self, *args, **kwargs):
        CountingConnection.extra += 1
        return await super()._copy_in_records(*args, **kwargs)


def round_trips() -> int:
    """Round trips so far, by every CountingConnection still open."""
    return CountingConnection.extra + sum(c._protocol.queries_count
                                          for c in CountingConnection._live
                                          if c._protocol is not None)


def make_config(directory: Path, database_uri: str, **overrides) -> Config:
    """The bridge's config (the example's values), for a homeserver that is never reached."""
    path = directory / "config.yaml"
    write_config(path, homeserver_url="http://127.0.0.1:9", domain=DOMAIN, port=9,
                 database_uri=database_uri, **overrides)
    config = Config(str(path))
    config.load()
    config.update(save=False)
    return config


async def open_crypto_db(config: Config, *, count: bool = False) -> Database:
    """The bridge's crypto database (crypto_database()), mautrix's tables migrated."""
    db = crypto_database(config)
    if count:
        db._db_args["connection_class"] = CountingConnection
    await db.start()
    return db


def room_id() -> str:
    return f"!{uuid.uuid4().hex[:18]}:{DOMAIN}"


def user_id(name: str) -> str:
    return f"@{name}_{uuid.uuid4().hex[:6]}:{DOMAIN}"


async def encrypted_room(state_store: TrimmedStateStore, room: str,
                         rotation_messages: int | None = None) -> None:
    """Tell the state store the room is encrypted (what the bridge learns from its state)."""
    content = RoomEncryptionStateEventContent(algorithm=EncryptionAlgorithm.MEGOLM_V1)
    if rotation_messages:
        content.rotation_period_msgs = rotation_messages
    await state_store.set_encryption_info(room, content)


async def device(config: Config, state_store: TrimmedStateStore, db: Database, user: str,
                 device_id: str | None = None) -> Crypto:
    """A started device for `user`, as Crypto.start() leaves it but without the homeserver:
    its account is made (or, with the same user again, loaded: a restart) and kept in `db`."""
    intent = SimpleNamespace(mxid=user)
    appservice = SimpleNamespace(intent=intent, http_session=object(), as_token="unused")
    crypto = Crypto(appservice, config, state_store, None, db, intent=intent)
    crypto.client.api.request = _refuse
    await crypto.store.open()
    known = await crypto.store.get_device_id()
    crypto.client.device_id = known or device_id or f"DEV{uuid.uuid4().hex[:7].upper()}"
    await crypto.machine.load()
    if not known:
        await crypto.store.put_device_id(crypto.client.device_id)
    return crypto


def identity(crypto: Crypto, trust: TrustState = TrustState.UNVERIFIED) -> DeviceIdentity:
    account = crypto.machine.account
    return DeviceIdentity(user_id=crypto.client.mxid, device_id=crypto.client.device_id,
                          identity_key=account.identity_key, signing_key=account.signing_key,
                          trust=trust, deleted=False, name="Stranger")


async def learn_device(receiver: Crypto, sender: Crypto,
                       trust: TrustState = TrustState.UNVERIFIED) -> None:
    """The receiver knows the sender's device keys, as after querying them."""
    await receiver.store.put_devices(sender.client.mxid,
                                     {sender.client.device_id: identity(sender, trust)})


async def cross_sign(receiver: Crypto, sender: Crypto) -> None:
    """The sender's user has cross-signing keys, their device signed by its self-signing key,
    as the receiver's store records them after a /keys/query: resolve_trust then walks the
    whole chain (master -> self-signing -> device) and finds CROSS_SIGNED_TOFU."""
    user = sender.client.mxid
    master = olm.PkSigning(olm.PkSigning.generate_seed())
    self_signing = olm.PkSigning(olm.PkSigning.generate_seed())
    store = receiver.store
    await store.put_cross_signing_key(user, CrossSigningUsage.MASTER, master.public_key)
    await store.put_cross_signing_key(user, CrossSigningUsage.SELF, self_signing.public_key)
    await store.put_signature(CrossSigner(user, self_signing.public_key),
                              CrossSigner(user, master.public_key),
                              master.sign(self_signing.public_key))
    signing_key = sender.machine.account.signing_key
    await store.put_signature(CrossSigner(user, signing_key),
                              CrossSigner(user, self_signing.public_key),
                              self_signing.sign(signing_key))


@dataclass
class RoomKey:
    """What an m.room_key to-device message carries (the key at its first message index)."""
    room_id: str
    session_id: str
    session_key: str
    max_messages: int
    max_age_ms: int


async def share_session(sender: Crypto, room: str, *receivers: Crypto) -> RoomKey:
    """A new outbound megolm session for `room` on the sender, its key given to each receiver
    (give_key: as mautrix stores a received m.room_key)."""
    session = await sender.machine._new_outbound_group_session(room)  # + the sender's copy
    session.shared = True
    await sender.store.add_outbound_group_session(session)
    key = RoomKey(room, session.id, session.session_key, session.max_messages,
                  int(session.max_age.total_seconds() * 1000))
    for receiver in receivers:
        await give_key(receiver, sender, key)
    return key


async def give_key(receiver: Crypto, sender: Crypto, key: RoomKey) -> None:
    account = sender.machine.account
    await receiver.machine._create_group_session(
        account.identity_key, account.signing_key, key.room_id, key.session_id,
        key.session_key, max_age=key.max_age_ms, max_messages=key.max_messages)


def encrypted_event(room: str, sender: str, content: dict, event_id: str | None = None,
                    timestamp: int | None = None) -> dict:
    """The m.room.encrypted event as a transaction would bring it."""
    return {"type": "m.room.encrypted", "room_id": room, "sender": sender,
            "event_id": event_id or f"${uuid.uuid4().hex}",
            "origin_server_ts": timestamp or int(time.time() * 1000),
            "content": content, "unsigned": {}}


def text(body: str) -> dict:
    return {"msgtype": "m.text", "body": body}
