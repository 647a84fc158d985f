"""The appservice HTTP API: token check, then each transaction's events recorded durably.

The homeserver retries a transaction until it gets a 200, so we answer 200 only once every
event in it is in the inbox table, and an error when they could not be stored. Events are
deduplicated by event ID there (transaction IDs are not reliable across restarts). Handling
happens afterwards, in order per room (see dispatcher.py).
"""
from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Awaitable, Callable

import asyncpg
from aiohttp import web
from mautrix.appservice import AppService

from bridge.dispatcher import is_transient
from bridge.metrics import definitions as metrics
from bridge.store import inbox, room_partitions

log = logging.getLogger("bridge.intake")

# Larger than any event a homeserver may send (65,536 bytes each) times a full transaction.
MAX_TRANSACTION_BYTES = 64 * 1024 * 1024


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def token_matches(given: str, expected: str) -> bool:
    """Compared in constant time (hmac.compare_digest), so how long a refusal takes says
    nothing of how much of a guessed token was right. As bytes: compare_digest refuses str
    with characters beyond ASCII, which anyone may send."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                               expected.encode("utf-8", "surrogatepass"))


def well_formed(event: object) -> bool:
    """The fields the bridge relies on exist and have the right types."""
    return (isinstance(event, dict)
            and all(isinstance(event.get(k), str) and event.get(k)
                    for k in ("event_id", "room_id", "type", "sender"))
            and isinstance(event.get("content"), dict)  # required; {} when redacted
            and storable(event))


# A NUL escape in JSON text, i.e. preceded by an even number of backslashes.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def storable(event: dict) -> bool:
    """PostgreSQL text and jsonb hold neither NUL nor lone surrogates: storing such an event
    would fail the whole transaction, and the homeserver would retry it forever."""
    try:
        # allow_nan=False: JSON has no NaN or Infinity (1e999 parses as inf), nor does jsonb.
        text = json.dumps(event, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # a lone surrogate cannot be encoded
    except (ValueError, RecursionError):
        return False
    return _NUL_ESCAPE.search(text) is None


class IntakeAppService(AppService):
    """mautrix's AppService with a transaction endpoint that acknowledges only durable events."""

    def __init__(self, *args, pool: asyncpg.Pool,
                 on_recorded: Callable[[set[str], dict[str, int] | None],
                                       Awaitable[None] | None], **kwargs) -> None:
        self.pool = pool
        # Told the rooms recorded and (several processes) the partition their new events
        # were recorded in.
        self.on_recorded = on_recorded
        # Several processes (bridge/cluster/): the number of partitions; each event is
        # recorded with its room's (room_partitions), so it is handled where it belongs.
        self.partitions: int | None = None
        # Told of every transaction: its well-formed events, whether they were recorded
        # (False: answered 503), and how many of them the inbox had already (a re-sent
        # transaction). Recovery watches the homeserver's deliveries with it.
        self.on_transaction: Callable[[list[dict], bool, int], None] | None = None
        # Appservice-mode encryption (device_events.py): to-device messages, device lists and
        # key counts, handled before the answer because the homeserver sends them only once.
        self.on_device_events: Callable[[dict], Awaitable[None]] | None = None
        # Typing notifications and read receipts (relay/ephemeral.py): sent once, not stored.
        self.on_ephemeral: Callable[[list[dict]], None] | None = None
        kwargs.setdefault("aiohttp_params", {"client_max_size": MAX_TRANSACTION_BYTES})
        super().__init__(*args, **kwargs)
        # mautrix sets it in start(), and stop() reads it: a start-up that failed earlier
        # must still stop cleanly (and report its own error, not this one).
        self.runner = None

    def _token_error(self, request: web.Request) -> web.Response | None:
        token = request.rel_url.query.get("access_token")
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            token = header.removeprefix("Bearer ")
        if token is None:
            return _error(401, "M_UNAUTHORIZED", "missing homeserver token")
        if not token_matches(token, self.hs_token):
            return _error(403, "M_FORBIDDEN", "invalid homeserver token")
        return None

    def _check_token(self, request: web.Request) -> bool:
        """mautrix's own check (every route of ours uses _token_error), constant-time too."""
        return self._token_error(request) is None

    async def _http_handle_transaction(self, request: web.Request) -> web.Response:
        with metrics.TRANSACTION_SECONDS.time():
            return await self._handle_transaction(request)

    async def _handle_transaction(self, request: web.Request) -> web.Response:
        if (denied := self._token_error(request)) is not None:
            return denied
        txn_id = request.match_info["transaction_id"]
        try:
            body = json.loads(await request.read())
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "M_TOO_LARGE", "transaction body is too large")
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: too deep
            return _error(400, "M_NOT_JSON", "transaction body is not JSON")
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list):
            return _error(400, "M_BAD_JSON", "transaction needs an 'events' list")
        if self.on_device_events is not None:
            try:  # first: a room key is then stored before its message is handled
                await self.on_device_events(body)
            except Exception as e:
                if not is_transient(e):  # a bug: retrying for ever would block every room
                    log.exception("Transaction %s: device events failed", txn_id)
                else:
                    log.error("Transaction %s: device events not handled, asking for a "
                              "retry: %s", txn_id, e)
                    return _error(503, "M_UNKNOWN", "could not handle the transaction, "
                                  "retry later")
        ephemeral = body.get("ephemeral", body.get("de.sorunome.msc2409.ephemeral"))
        if self.on_ephemeral is not None and isinstance(ephemeral, list):
            self.on_ephemeral(ephemeral)
        valid = [e for e in events if well_formed(e)]
        if len(valid) != len(events):
            log.warning("Transaction %s: skipped %d malformed event(s)", txn_id,
                        len(events) - len(valid))
        if valid:
            try:
                valid, already_known, partitions = await self._record(txn_id, valid)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                # Not stored: make the homeserver retry rather than lose the events.
                log.error("Transaction %s not recorded, asking for a retry: %s", txn_id, e)
                if self.on_transaction is not None:
                    self.on_transaction(valid, False, 0)
                return _error(503, "M_UNKNOWN", "could not record the transaction, retry later")
            if self.on_transaction is not None:
                self.on_transaction(valid, True, already_known)
            result = self.on_recorded({e["room_id"] for e in valid}, partitions)
            if result is not None:
                await result
        log.debug("Transaction %s: recorded %d event(s)", txn_id, len(valid))
        return web.json_response({})

    async def _partitions(self, conn, events: list[dict]) -> dict[str, int] | None:
        if self.partitions is None:
            return None
        return await room_partitions.of_rooms(conn, {e["room_id"] for e in events},
                                              self.partitions)

    async def _record(self, txn_id: str, events: list[dict]
                      ) -> tuple[list[dict], int, dict[str, int] | None]:
        """Record the events; returns those stored, how many the inbox had already, and
        (several processes) the partition of each room's events.
        An error about one event's data (not about the database being away) must not fail
        the transaction, which the homeserver would retry, with everything after it, for
        ever: such a transaction is recorded event by event, skipping what is refused."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                already_known = await conn.fetchval(
                    "SELECT count(*) FROM inbox WHERE event_id = ANY($1::text[])",
                    [e["event_id"] for e in events])
                partitions = await self._partitions(conn, events)
                await inbox.record(conn, events, partitions)
            return events, already_known, partitions
        except asyncpg.PostgresError as e:
            if is_transient(e):
                raise
            log.warning("Transaction %s: recording failed (%s); recording event by event",
                        txn_id, type(e).__name__)
        stored = []
        async with self.pool.acquire() as conn:
            partitions = await self._partitions(conn, events)
            for event in events:
                try:
                    async with conn.transaction():
                        await inbox.record(conn, [event], partitions)
                    stored.append(event)
                except asyncpg.PostgresError as e:
                    if is_transient(e):
                        raise
                    log.warning("Transaction %s: skipped an event the database refused (%s)",
                                txn_id, type(e).__name__)
        return stored, 0, partitions

    async def _http_ping(self, request: web.Request) -> web.Response:
        if (denied := self._token_error(request)) is not None:
            return denied
        return web.json_response({})

    async def _http_query_user(self, request: web.Request) -> web.Response:
        if (denied := self._token_error(request)) is not None:
            return denied
        # Ghosts are created by the bridge itself; nobody else may conjure one.
        return _error(404, "M_NOT_FOUND", "no such user")

    async def _http_query_alias(self, request: web.Request) -> web.Response:
        if (denied := self._token_error(request)) is not None:
            return denied
        return _error(404, "M_NOT_FOUND", "no such room alias")
