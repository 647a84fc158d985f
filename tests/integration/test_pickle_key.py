"""Changing the pickle key: every stored Olm account and session, pickled with the old key,
still loads and decrypts under the new one (real PostgreSQL, mautrix's own crypto store)."""
from __future__ import annotations

import logging

import asyncpg
import olm
import pytest
from mautrix.crypto import (InboundGroupSession, OlmAccount, OutboundGroupSession,
                            PgCryptoStore)
from mautrix.types import OlmCiphertext, OlmMsgType
from mautrix.util.async_db import Database
from ruamel.yaml import YAML

from bridge.config import Config
from bridge.encryption.pickle_key import (PLACEHOLDER, PickleKeyError, adopt, rotate,
                                          rotate_config)

BOT = "@strangerbot:example.org"
ROOM = "!room:example.org"
NEW = "a-new-pickle-key-0123456789"


@pytest.fixture
async def crypto_db(database_uri):
    db = Database.create(database_uri, upgrade_table=PgCryptoStore.upgrade_table,
                         log=logging.getLogger("test.crypto.db"))
    await db.start()
    yield db
    await db.stop()


@pytest.fixture
async def conn(database_uri):
    conn = await asyncpg.connect(database_uri)
    yield conn
    await conn.close()


class Stored:
    """A device's state written with `key` as mautrix writes it, and what a peer needs to
    talk to it afterwards."""

    async def write(self, db: Database, key: str) -> "Stored":
        store = PgCryptoStore(BOT, key, db)
        self.account = OlmAccount()
        self.account.generate_one_time_keys(1)
        self.one_time_key = next(iter(self.account.one_time_keys["curve25519"].values()))
        self.identity = self.account.identity_keys
        await store.put_account(self.account)
        # An Olm session with a peer, as if we had started it; the peer answers later.
        self.peer = olm.Account()
        self.peer.generate_one_time_keys(1)
        peer_key = self.peer.identity_keys["curve25519"]
        session = self.account.new_outbound_session(
            peer_key, next(iter(self.peer.one_time_keys["curve25519"].values())))
        first = olm.OlmPreKeyMessage(session.encrypt("hello peer").body)
        self.peer_session = olm.InboundSession(self.peer, first, self.identity["curve25519"])
        assert self.peer_session.decrypt(first) == "hello peer"
        self.peer_key = peer_key
        await store.add_session(peer_key, session)
        # Our outbound room key, and the inbound copy of it, with a message sent before.
        outbound = OutboundGroupSession(ROOM)
        outbound.shared = True
        self.inbound = InboundGroupSession(outbound.session_key, self.identity["ed25519"],
                                           self.identity["curve25519"], ROOM)
        self.early = outbound.encrypt("before the rotation")
        self.session_id = outbound.id
        await store.add_outbound_group_session(outbound)
        await store.put_group_session(ROOM, self.identity["curve25519"], outbound.id,
                                      self.inbound)
        return self

    async def assert_works_with(self, db: Database, key: str) -> None:
        store = PgCryptoStore(BOT, key, db)
        account = await store.get_account()
        assert account.identity_keys == self.identity
        # The account still answers a peer's first message (on its one-time key).
        newcomer = olm.Account()
        outbound = olm.OutboundSession(newcomer, self.identity["curve25519"], self.one_time_key)
        pre_key = outbound.encrypt("to the account")
        inbound = olm.InboundSession(account, pre_key, newcomer.identity_keys["curve25519"])
        assert inbound.decrypt(pre_key) == "to the account"
        # The Olm session decrypts the peer's answer.
        session = (await store.get_sessions(self.peer_key))[0]
        answer = self.peer_session.encrypt("hello back")
        assert session.decrypt(OlmCiphertext(type=OlmMsgType.MESSAGE,
                                             body=answer.ciphertext)) == "hello back"
        # The room key decrypts what was sent before, and the outbound one keeps sending.
        group = await store.get_group_session(ROOM, self.session_id)
        assert group.decrypt(self.early)[0] == "before the rotation"
        out = await store.get_outbound_group_session(ROOM)
        assert out.id == self.session_id
        assert group.decrypt(out.encrypt("after the rotation"))[0] == "after the rotation"


async def test_rotation_keeps_every_key_working(crypto_db, conn):
    stored = await Stored().write(crypto_db, PLACEHOLDER)
    result = await rotate(conn, PLACEHOLDER, NEW)
    assert (result.moved, result.already) == (4, 0)  # account, Olm, inbound, outbound
    await stored.assert_works_with(crypto_db, NEW)
    # The old key opens nothing any more.
    with pytest.raises(olm.OlmAccountError):
        await PgCryptoStore(BOT, PLACEHOLDER, crypto_db).get_account()


async def test_rotation_run_twice_finds_the_rows_moved(crypto_db, conn):
    stored = await Stored().write(crypto_db, PLACEHOLDER)
    await rotate(conn, PLACEHOLDER, NEW)
    again = await rotate(conn, PLACEHOLDER, NEW)
    assert (again.moved, again.already) == (0, 4)
    await stored.assert_works_with(crypto_db, NEW)


async def test_a_row_of_a_third_key_stops_the_rotation_and_changes_nothing(crypto_db, conn):
    stored = await Stored().write(crypto_db, PLACEHOLDER)
    stray = OutboundGroupSession("!other:example.org")
    await PgCryptoStore(BOT, "some-third-key-xyz", crypto_db).add_outbound_group_session(stray)
    before = await conn.fetch("SELECT account FROM crypto_account")
    with pytest.raises(PickleKeyError, match="crypto_megolm_outbound_session"):
        await rotate(conn, PLACEHOLDER, NEW)
    assert await conn.fetch("SELECT account FROM crypto_account") == before
    await stored.assert_works_with(crypto_db, PLACEHOLDER)


async def test_start_adopts_a_database_pickled_with_the_placeholder(crypto_db, conn):
    stored = await Stored().write(crypto_db, PLACEHOLDER)
    adopted = await adopt(conn, NEW)
    assert adopted.moved == 4
    await stored.assert_works_with(crypto_db, NEW)
    assert await adopt(conn, NEW) is None  # the next start has nothing to do


async def test_start_refuses_keys_of_another_key_naming_the_fix(crypto_db, conn):
    await Stored().write(crypto_db, "an-operators-own-key-1")
    with pytest.raises(PickleKeyError, match="--rotate-pickle-key --old-pickle-key"):
        await adopt(conn, NEW)


async def test_adopt_and_rotate_without_crypto_tables(conn):
    assert await adopt(conn, NEW) is None
    assert (await rotate(conn, PLACEHOLDER, NEW)).moved == 0


async def test_the_command_writes_the_new_key_to_the_config(crypto_db, database_uri, tmp_path):
    stored = await Stored().write(crypto_db, PLACEHOLDER)
    path = tmp_path / "config.yaml"
    YAML().dump({"homeserver": {"domain": "chat.example.net"}, "database": {"uri": database_uri},
                 "appservice": {"as_token": "a" * 32, "hs_token": "h" * 32}}, path.open("w"))
    config = Config(str(path))
    config.load()
    config.update(save=False)
    rotated, new = await rotate_config(config)
    assert rotated.moved == 4 and new != PLACEHOLDER and len(new) >= 32
    saved = YAML().load(path.read_text())
    assert saved["bridge"]["encryption"]["pickle_key"] == new
    assert saved["appservice"]["as_token"] == "a" * 32  # the rest of the config is kept
    assert (path.stat().st_mode & 0o077) == 0  # it holds secrets
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    await stored.assert_works_with(crypto_db, new)


async def test_a_failed_command_leaves_the_config_alone(crypto_db, database_uri, tmp_path):
    await Stored().write(crypto_db, "an-operators-own-key-1")
    path = tmp_path / "config.yaml"
    YAML().dump({"homeserver": {"domain": "chat.example.net"}, "database": {"uri": database_uri}},
                path.open("w"))
    before = path.read_text()
    config = Config(str(path))
    config.load()
    config.update(save=False)
    with pytest.raises(PickleKeyError):
        await rotate_config(config, old="not-the-right-one")
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
