"""Relaying one user's event into their partner's room, as the partner's ghost.

Every event passes through sanitise() (the anonymity boundary); what comes out is sent
with a transaction ID derived from the source event, and the pair of event IDs is recorded
so replies and edits can be mapped, and so a repeated event is never relayed twice. The
sanitised body also goes into the side's bounded evidence buffer (bridge/store/evidence.py).
"""
from __future__ import annotations

import logging

import asyncpg

from bridge.config import Config
from bridge.portal import Portal, txn_id
from bridge.relay.sanitise import Refused, sanitise
from bridge.store import evidence, relayed
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.relay")


def referenced_event_ids(content: object) -> set[str]:
    """Event IDs the content points at (reply, edit, thread), to be mapped across rooms."""
    found: set[str] = set()
    relates = content.get("m.relates_to") if isinstance(content, dict) else None
    if isinstance(relates, dict):
        if isinstance(relates.get("event_id"), str):
            found.add(relates["event_id"])
        reply = relates.get("m.in_reply_to")
        if isinstance(reply, dict) and isinstance(reply.get("event_id"), str):
            found.add(reply["event_id"])
    return found


class Relayer:
    def __init__(self, pool: asyncpg.Pool, config: Config, portal: Portal) -> None:
        self.pool = pool
        self.config = config
        self.portal = portal

    async def relay(self, conv: Conversation, side: Side, event: dict) -> None:
        if await relayed.target_of(self.pool, event["event_id"]) is not None:
            # Relayed already: the event is being handled again after a crash or a database
            # outage hit between the send and marking it handled. The homeserver's own
            # transaction-ID dedup is only in memory, so do not count on it.
            return
        partner = conv.partner_of(side)
        mapping = {}
        for event_id in referenced_event_ids(event.get("content")):
            mapping[event_id] = await relayed.counterpart(self.pool, conv.id, event_id)
        result = sanitise(event["type"], event.get("content"), map_event_id=mapping.get,
                          max_body_bytes=self.config["bridge.max_body_bytes"])
        if isinstance(result, Refused):
            log.info("Conversation %d: refused %s from side %d: %s %s", conv.id,
                     event["event_id"], side.side, result.reason, result.detail)
            await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id,
                                     f"refused_{result.reason}", cause=event["event_id"])
            return
        # The ghost in the PARTNER's room stands for this user.
        target_event_id = await self.portal.send(
            partner.ghost_id, partner.room_id, event["type"], result,
            txn_id("relay", event["event_id"]))
        await relayed.record(self.pool, event["event_id"], conv.id, partner.room_id,
                             target_event_id)
        keep = self.config["bridge.moderation.evidence_messages"]
        body = result.get("body")
        if keep and isinstance(body, str):
            # The rolling evidence buffer (what was relayed, sanitised): a report's evidence.
            await evidence.append(self.pool, conv.id, side.side, body, keep)
