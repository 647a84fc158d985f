"""A discusser's event, once relayed to the other discusser, copied into the asker's watch
room as "Stranger 1" or "Stranger 2".

Only what the relay delivered is mirrored (never what it refused or held back, never a
command, a bot's or a ghost's notice): the caller hands over events of the discussers' own,
and the relay's record (relayed) says whether it crossed. The content is built by the
relay's own path (Relayer.content_for: the attachment copied afresh for the watch room,
then sanitise()), so the watch room sees exactly what the anonymity boundary lets through.
Calls are not mirrored: the asker's client would ring.
"""
from __future__ import annotations

import logging

import asyncpg

from bridge.group_calls import GROUP_CALL_NOTIFY_TYPES
from bridge.portal import Portal, txn_id
from bridge.questions import table
from bridge.questions.table import Question
from bridge.relay.calls import is_call_event
from bridge.relay.relayer import Relayer
from bridge.refused import Refused
from bridge.relay.sanitise import redacted_event_id
from bridge.store import relayed
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.questions.mirror")


class Mirror:
    def __init__(self, pool: asyncpg.Pool, portal: Portal, relayer: Relayer) -> None:
        self.pool = pool
        self.portal = portal
        self.relayer = relayer

    async def mirror(self, q: Question, conv: Conversation, side: Side, event: dict) -> None:
        if q.state != "matched" or q.watch_room_id is None:
            return  # the watch is over (or not open: it opens before the chat is active)
        event_id = event["event_id"]
        if is_call_event(event["type"]) or event["type"] in GROUP_CALL_NOTIFY_TYPES:
            return
        if await table.mirrored(self.pool, event_id) is not None:
            return  # handled again after a crash: mirrored already
        if await relayed.target_of(self.pool, event_id) is None:
            return  # the relay did not deliver it: neither does the mirror
        ghost_id = q.ghost_of(side.side)
        if event["type"] == "m.room.redaction":
            original = redacted_event_id(event)
            copy = await table.mirrored(self.pool, original) if original else None
            if copy is None:
                return
            done = await self.portal.redact(ghost_id, q.watch_room_id, copy,
                                            txn_id("mirror-redact", event_id))
            await table.record_mirrored(self.pool, event_id, q.id, done)
            return
        # The watch room as a relay target: its ghost for this discusser, its room.
        target = Side(conv.id, side.side, q.asker, ghost_id, q.watch_room_id, None, True, None)
        content = await self.relayer.content_for(side, target, event,
                                                 lambda eid: self._counterpart(conv, eid))
        if isinstance(content, Refused):
            log.info("Question %d: %s not mirrored: %s", q.id, event_id, content.reason)
            return
        sent = await self.portal.send(ghost_id, q.watch_room_id, event["type"], content,
                                      txn_id("mirror", event_id))
        await table.record_mirrored(self.pool, event_id, q.id, sent)

    async def _counterpart(self, conv: Conversation, event_id: str) -> str | None:
        """An event a discusser points at (a reply, edit or reaction), in the watch room: the
        copy of their own message, or of the other's (whose copy in their room they saw)."""
        copy = await table.mirrored(self.pool, event_id)
        if copy is None:
            original = await relayed.source_of(self.pool, conv.id, event_id)
            copy = await table.mirrored(self.pool, original) if original else None
        return copy
