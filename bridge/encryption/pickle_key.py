"""The pickle key: what encrypts the Olm and Megolm state mautrix stores in PostgreSQL.

mautrix's PgCryptoStore pickles (encrypts with the key) four columns, and only those:
the Olm account of each device (crypto_account.account), its Olm sessions
(crypto_olm_session.session), and its inbound and outbound Megolm sessions
(crypto_megolm_inbound_session.session, NULL once redacted; crypto_megolm_outbound_session
.session). Everything else in the crypto tables is public keys, IDs and bookkeeping. Beside
them the bridge keeps one secret of its own under the same key: the bot's cross-signing seeds
(bot_cross_signing.seeds, bridge/encryption/cross_signing.py), sealed by seal() below.

Changing the key means re-pickling those four columns and re-sealing the seeds, all in one
transaction, so the database holds either the old key's pickles or the new key's, never a
mix. Each row is tried with the new key first: a rotation interrupted before its commit, or
run twice, or run by two processes at once (the tables are locked), finds the rows it
already moved and leaves them. A row neither key opens stops the rotation (nothing changes) and is named.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from dataclasses import dataclass

import asyncpg
import olm
from mautrix.crypto.ssss import Key
from mautrix.crypto.ssss.types import EncryptedKeyData
from mautrix.types import SerializerError
from mautrix.util.config.file import yaml

from bridge.config import PLACEHOLDER_PICKLE_KEY as PLACEHOLDER, Config

log = logging.getLogger("bridge.encryption.pickle_key")

# PLACEHOLDER, the example config's value: the bridge refuses to start with it (anyone who
# read the example could decrypt a copy of the database), but adopts a database pickled with
# it (adopt()).
# (table, key columns, pickled column, python-olm class)
PICKLED = (
    ("crypto_account", ("account_id",), "account", olm.Account),
    ("crypto_olm_session", ("account_id", "session_id"), "session", olm.Session),
    ("crypto_megolm_inbound_session", ("account_id", "session_id"), "session",
     olm.InboundGroupSession),
    ("crypto_megolm_outbound_session", ("account_id", "room_id"), "session",
     olm.OutboundGroupSession),
)
_OLM_ERRORS = (olm.OlmAccountError, olm.OlmSessionError, olm.OlmGroupSessionError)
# Secrets the bridge seals itself (table, key column, sealed column): alembic's tables.
SEALED = (("bot_cross_signing", "user_id", "seeds"),)
# What the seal's encryption and MAC keys are derived for (HKDF's info).
_SEAL_PURPOSE = "org.strangerbridge.sealed"


class PickleKeyError(Exception):
    """Stored keys that neither the old nor the new pickle key opens."""


@dataclass
class Rotated:
    moved: int = 0     # re-pickled from the old key to the new one
    already: int = 0   # already under the new key


def new_pickle_key() -> str:
    return secrets.token_urlsafe(32)


def _opens(kind: type, pickle: bytes, key: str) -> object | None:
    try:
        return kind.from_pickle(bytes(pickle), key)
    except _OLM_ERRORS:
        return None


def seal(secret: bytes, key: str) -> str:
    """`secret` encrypted with the pickle key, as text. libolm's pickles are for its own
    objects only, so this is Matrix's secret-storage encryption (m.secret_storage.v1.
    aes-hmac-sha2: AES-256-CTR and HMAC-SHA-256, both keys derived from the pickle key by
    HKDF), as libolm derives its pickle cipher's keys from the pickle key by HKDF."""
    sealed = Key(id="", key=key.encode(), metadata=None).encrypt(_SEAL_PURPOSE, secret)
    return json.dumps(sealed.serialize())


def unseal(sealed: str, key: str) -> bytes | None:
    """What seal() sealed, or None when `key` is not the key it was sealed with (the MAC
    does not match) or the text is not a seal."""
    try:
        data = EncryptedKeyData.deserialize(json.loads(sealed))
        return Key(id="", key=key.encode(), metadata=None).decrypt(_SEAL_PURPOSE, data)
    except (ValueError, TypeError, AttributeError, SerializerError):
        return None


async def _has_crypto_tables(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT to_regclass('crypto_account') IS NOT NULL")


async def rotate(conn: asyncpg.Connection, old: str, new: str) -> Rotated:
    """Re-pickle every stored Olm account and session, and re-seal the sealed secrets, from
    `old` to `new`, in one transaction. Raises PickleKeyError (and changes nothing) if a row
    opens with neither."""
    result = Rotated()
    if not await _has_crypto_tables(conn):
        return result
    sealed_tables = [entry for entry in SEALED
                     if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", entry[0])]
    async with conn.transaction():
        tables = ", ".join([table for table, *_ in PICKLED]
                           + [table for table, *_ in sealed_tables])
        # No bridge process may write a pickle (with either key) while they are re-written.
        await conn.execute(f"LOCK TABLE {tables} IN SHARE ROW EXCLUSIVE MODE")
        for table, keys, column, kind in PICKLED:
            rows = await conn.fetch(f"SELECT {', '.join(keys)}, {column} AS pickle FROM {table} "
                                    f"WHERE {column} IS NOT NULL")
            where = " AND ".join(f"{k} = ${i + 2}" for i, k in enumerate(keys))
            for row in rows:
                if _opens(kind, row["pickle"], new) is not None:
                    result.already += 1
                    continue
                opened = _opens(kind, row["pickle"], old)
                if opened is None:
                    ids = ", ".join(f"{k}={row[k]}" for k in keys)
                    raise PickleKeyError(f"{table} ({ids}) opens with neither the old nor the "
                                         f"new pickle key")
                await conn.execute(f"UPDATE {table} SET {column} = $1 WHERE {where}",
                                   opened.pickle(new), *(row[k] for k in keys))
                result.moved += 1
        for table, key, column in sealed_tables:
            for row in await conn.fetch(f"SELECT {key}, {column} AS sealed FROM {table}"):
                if unseal(row["sealed"], new) is not None:
                    result.already += 1
                    continue
                if (secret := unseal(row["sealed"], old)) is None:
                    raise PickleKeyError(f"{table} ({key}={row[key]}) opens with neither the "
                                         f"old nor the new pickle key")
                await conn.execute(f"UPDATE {table} SET {column} = $1 WHERE {key} = $2",
                                   seal(secret, new), row[key])
                result.moved += 1
    return result


async def adopt(conn: asyncpg.Connection, key: str) -> Rotated | None:
    """At start: a database whose keys were pickled with the example's placeholder (before
    `-g` wrote a random key) is re-pickled with the configured key. Raises PickleKeyError if
    the stored keys open with neither. None when there was nothing to do."""
    if not await _has_crypto_tables(conn):
        return None
    pickle = await conn.fetchval("SELECT account FROM crypto_account LIMIT 1")
    if pickle is None or _opens(olm.Account, pickle, key) is not None:
        return None
    if key == PLACEHOLDER or _opens(olm.Account, pickle, PLACEHOLDER) is None:
        raise PickleKeyError(
            "the encryption keys stored in the database cannot be read with "
            "bridge.encryption.pickle_key (they were written with another key): put the old "
            "key back, or run `python -m bridge -c CONFIG --rotate-pickle-key "
            "--old-pickle-key OLD_KEY` to move them to a new one")
    rotated = await rotate(conn, PLACEHOLDER, key)
    log.warning("Re-encrypted %d stored encryption keys from the example's placeholder pickle "
                "key to bridge.encryption.pickle_key", rotated.moved)
    return rotated


async def rotate_config(config: Config, old: str | None = None) -> tuple[Rotated, str]:
    """`--rotate-pickle-key`: a fresh key for the stored keys and the config file. The new
    config is written beside the old one first and renamed over it only once the database
    has committed, so the file never names a key the database does not use; if the rename
    never happens, the new key is in the file named by the error. Returns what moved and
    the new key."""
    old = old or config["bridge.encryption.pickle_key"]
    new = new_pickle_key()
    config["bridge.encryption.pickle_key"] = new
    directory = os.path.dirname(os.path.abspath(config.path))
    with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".new-pickle-key.yaml",
                                     delete=False) as f:  # mode 0600: it holds secrets
        yaml.dump(config._data, f)
        f.flush()
        os.fsync(f.fileno())
    try:
        conn = await asyncpg.connect(config["database.uri"])
        try:
            rotated = await rotate(conn, old, new)
        finally:
            await conn.close()
    except BaseException:
        os.unlink(f.name)
        config["bridge.encryption.pickle_key"] = old
        raise
    try:
        os.replace(f.name, config.path)
    except OSError as e:
        raise PickleKeyError(f"the database now uses the new key, but {config.path} could not "
                             f"be replaced ({e}): the config with the new key is {f.name}; "
                             f"move it there by hand") from e
    return rotated, new
