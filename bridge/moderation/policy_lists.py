"""Matrix moderation policy lists (bridge.policy_rooms): the bot joins each room, reads its
current ban rules, and follows their changes as state events arrive. The rules are kept in
PostgreSQL (policy_rules), so every bridge process and a restart see the same ones.

What counts (spec: client-server API, "Moderation policy lists"): m.policy.rule.user and
m.policy.rule.server state events with recommendation m.ban, entity a glob (globs.py). The
older types m.room.rule.* and org.matrix.mjolnir.rule.* and the recommendation
org.matrix.mjolnir.ban, used before the spec settled and still found in long-lived lists, are
read as the same. A rule is lifted by a newer state event at the same (type, state key) that
is empty or recommends something else, and by redacting the rule's event. Room rules
(m.policy.rule.room) do not concern this bridge.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg
from mautrix.api import Method, Path
from mautrix.errors import MatrixRequestError

from bridge.moderation.globs import has_glob, host_of, server_matches, server_of, user_matches
from bridge.moderation.restriction import Restriction

log = logging.getLogger("bridge.moderation.policy")

RULE_KINDS = {
    "m.policy.rule.user": "user", "m.room.rule.user": "user",
    "org.matrix.mjolnir.rule.user": "user",
    "m.policy.rule.server": "server", "m.room.rule.server": "server",
    "org.matrix.mjolnir.rule.server": "server",
}
BAN = frozenset({"m.ban", "org.matrix.mjolnir.ban"})
MAX_REASON = 500  # characters of a rule's reason kept (it is shown to the user it bans)


@dataclass(frozen=True)
class Rule:
    room_id: str
    event_type: str
    state_key: str
    kind: str  # user | server
    entity: str  # a glob
    reason: str
    event_id: str

    def applies_to(self, user_id: str) -> bool:
        if self.kind == "user":
            return user_matches(self.entity, user_id)
        return server_matches(self.entity, server_of(user_id))

    def restriction(self) -> Restriction:
        kind = "banned" if self.kind == "user" else "server_banned"
        return Restriction(kind, self.reason, None, "policy_list")


def parse_rule(event: dict) -> Rule | None:
    """The ban rule a policy state event sets; None when it sets none (empty, redacted, not a
    ban, no entity): whatever rule was at its (type, state key) is lifted."""
    content = event.get("content")
    if not isinstance(content, dict):
        return None
    entity, reason = content.get("entity"), content.get("reason")
    if content.get("recommendation") not in BAN or not isinstance(entity, str) or not entity:
        return None
    return Rule(event["room_id"], event["type"], event["state_key"], RULE_KINDS[event["type"]],
                entity, reason[:MAX_REASON] if isinstance(reason, str) else "", event["event_id"])


def is_rule_event(event: dict) -> bool:
    return event.get("type") in RULE_KINDS and isinstance(event.get("state_key"), str)


# -- the store ------------------------------------------------------------------------------


async def set_rooms(db, rooms: dict[str, str]) -> None:
    """The rooms now followed ({room ID: as configured}); rooms no longer in the config go,
    with their rules."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM policy_rooms WHERE room_id <> ALL($1::text[])",
                           list(rooms))
        await conn.executemany(
            """INSERT INTO policy_rooms (room_id, configured) VALUES ($1, $2)
               ON CONFLICT (room_id) DO UPDATE SET configured = EXCLUDED.configured""",
            list(rooms.items()))


async def is_policy_room(db, room_id: str) -> bool:
    return await db.fetchval("SELECT true FROM policy_rooms WHERE room_id = $1",
                             room_id) is not None


async def replace_rules(db, room_id: str, rules: list[Rule]) -> None:
    """A room's whole current state read again: exactly these rules hold for it."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM policy_rules WHERE room_id = $1", room_id)
        await conn.executemany(_INSERT, [_row(r) for r in rules])


_INSERT = """INSERT INTO policy_rules (room_id, event_type, state_key, kind, entity, is_glob,
                                      reason, event_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET
               kind = EXCLUDED.kind, entity = EXCLUDED.entity, is_glob = EXCLUDED.is_glob,
               reason = EXCLUDED.reason, event_id = EXCLUDED.event_id"""


def _row(rule: Rule) -> tuple:
    return (rule.room_id, rule.event_type, rule.state_key, rule.kind, rule.entity,
            has_glob(rule.entity), rule.reason, rule.event_id)


async def apply_state(db, event: dict) -> Rule | None:
    """A rule state event arrived in a policy room: store or lift the rule at its key.
    Returns the rule when one now applies."""
    rule = parse_rule(event)
    if rule is None:
        await db.execute(
            "DELETE FROM policy_rules WHERE room_id = $1 AND event_type = $2 AND state_key = $3",
            event["room_id"], event["type"], event["state_key"])
    else:
        await db.execute(_INSERT, *_row(rule))
    return rule


async def lift_redacted(db, room_id: str, redacted_event_id: str) -> bool:
    """The rule set by this event was redacted: it no longer holds."""
    return await db.fetchval(
        "DELETE FROM policy_rules WHERE room_id = $1 AND event_id = $2 RETURNING true",
        room_id, redacted_event_id) is not None


async def rules_for(db, user_id: str) -> list[Rule]:
    """Every rule that bans this user or their server."""
    server = server_of(user_id)
    names = list({server.lower(), host_of(server).lower()})
    rows = await db.fetch(
        """SELECT room_id, event_type, state_key, kind, entity, reason, event_id
             FROM policy_rules
            WHERE (NOT is_glob AND kind = 'user' AND lower(entity) = lower($1))
               OR (NOT is_glob AND kind = 'server' AND lower(entity) = ANY($2::text[]))
               OR is_glob
            ORDER BY room_id, event_type, state_key""", user_id, names)
    rules = [Rule(*r) for r in rows]
    return [r for r in rules if r.applies_to(user_id)]


async def policy_restriction(db, config, user_id: str) -> Restriction | None:
    """A user banned by a user rule, or whose server is banned by a server rule, in any
    followed policy room: the first such rule's reason is the statement of reasons."""
    rules = await rules_for(db, user_id)
    return rules[0].restriction() if rules else None


# -- following the rooms ----------------------------------------------------------------------


class PolicyLists:
    def __init__(self, bot, pool: asyncpg.Pool, config) -> None:
        self.bot = bot  # the bot's IntentAPI
        self.pool = pool
        self.configured: list[str] = list(config["bridge.policy_rooms"] or ())
        self.targets: dict[str, str] = {}  # room ID -> as configured, once resolved
        self.rooms: set[str] = set()  # the rooms followed: their events come to handle()

    async def start(self) -> None:
        """Join every configured room (resolving aliases) and read its current rules. A room
        that cannot be joined now is logged and followed once the bot is invited to it."""
        rooms: dict[str, str] = {}
        for entry in self.configured:
            try:
                room_id, servers = await self._resolve(entry)
                self.targets[room_id] = entry
                # No retries: a room the bot is not invited to would hold start-up for minutes.
                await self.bot.join_room(room_id, servers=servers or None, max_retries=0)
                rooms[room_id] = entry
            except MatrixRequestError as e:
                log.error("Policy room %s: cannot join (%s); its rules are not followed until "
                          "the bot is invited", entry, e)
        await set_rooms(self.pool, rooms)
        self.rooms = set(rooms)
        for room_id in rooms:
            await self.read(room_id)

    async def _resolve(self, entry: str) -> tuple[str, list[str]]:
        """(room ID, servers to join through)."""
        if entry.startswith("#"):
            info = await self.bot.resolve_room_alias(entry)
            return info.room_id, list(info.servers or ())
        if ":" in entry:
            return entry, [entry.split(":", 1)[1]]  # a room ID from before room version 12
        return entry, []

    def is_configured(self, room_id: str) -> bool:
        """A configured policy room (once resolved), whether the bot could join it or not."""
        return room_id in self.targets

    async def follow(self, room_id: str) -> None:
        """The bot has joined a configured policy room after start (it was invited)."""
        await self.pool.execute(
            "INSERT INTO policy_rooms (room_id, configured) VALUES ($1, $2) "
            "ON CONFLICT (room_id) DO NOTHING", room_id, self.targets[room_id])
        self.rooms.add(room_id)
        await self.read(room_id)

    async def read(self, room_id: str) -> int:
        """Read the room's whole current state; returns how many ban rules hold."""
        state = await self.bot.api.request(Method.GET, Path.v3.rooms[room_id].state)
        rules = [rule for event in state if is_rule_event(event)
                 for rule in [parse_rule({**event, "room_id": room_id})] if rule is not None]
        await replace_rules(self.pool, room_id, rules)
        log.info("Policy room %s: %d ban rules", room_id, len(rules))
        return len(rules)

    async def handle(self, event: dict) -> Rule | None:
        """An event in a policy room: a rule set, changed or lifted. Returns a rule that now
        applies (its users must be stopped), else None."""
        if is_rule_event(event):
            rule = await apply_state(self.pool, event)
            # Not the rule's entity: it may name a user.
            log.info("Policy room %s: a %s rule %s", event["room_id"], event["type"],
                     "set" if rule else "lifted")
            return rule
        if event.get("type") == "m.room.redaction":
            redacts = event.get("redacts") or (event.get("content") or {}).get("redacts")
            if isinstance(redacts, str) and await lift_redacted(self.pool, event["room_id"],
                                                                redacts):
                log.info("Policy room %s: a rule was lifted by redaction", event["room_id"])
        return None
