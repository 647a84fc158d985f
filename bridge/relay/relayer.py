"""Relaying one user's event into their partner's room, as the partner's ghost.

Every event passes through sanitise() (the anonymity boundary); what comes out is sent
with a transaction ID derived from the source event, and the pair of event IDs is recorded
so replies and edits can be mapped, and so a repeated event is never relayed twice. The
sanitised body also goes into the side's bounded evidence buffer (bridge/moderation/evidence.py).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import asyncpg

from bridge.config import Config
from bridge.group_calls import GROUP_CALL_NOTIFY_TYPES
from bridge.media.copier import MediaCopier
from bridge.media.kinds import kind_of
from bridge.metrics import definitions as metrics
from bridge.moderation import evidence
from bridge.moderation.chat_guard import links_allowed_after
from bridge.moderation.limits import Limits
from bridge.moderation.ratelimit import has_link
from bridge.portal import Portal, txn_id
from bridge.relay.calls import ids_of, is_call_event, sanitise_call
from bridge.relay.sanitise import Refused, redacted_event_id, sanitise
from bridge.store import calls as call_ids
from bridge.store import relayed
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
    def __init__(self, pool: asyncpg.Pool, config: Config, portal: Portal,
                 limits: Limits | None = None) -> None:
        self.pool = pool
        self.config = config
        self.portal = portal
        self.media = MediaCopier(config, portal)
        self.limits = limits or Limits(pool, config)

    async def relay(self, conv: Conversation, side: Side, event: dict) -> None:
        if await relayed.target_of(self.pool, event["event_id"]) is not None:
            # Relayed already: the event is being handled again after a crash or a database
            # outage hit between the send and marking it handled. The homeserver's own
            # transaction-ID dedup is only in memory, so do not count on it.
            return
        partner = conv.partner_of(side)
        if event["type"] == "m.room.redaction":
            await self._redact(conv, side, event)
            return
        if is_call_event(event["type"]):
            result = await self.call_content(conv, side, event)
            if result is None:  # nothing of it crosses (e.g. every candidate filtered out)
                return
        else:
            result = await self.content_for(
                side, partner, event,
                lambda event_id: relayed.counterpart(self.pool, conv.id, event_id))
        if isinstance(result, Refused):
            log.info("Conversation %d: refused %s from side %d: %s %s", conv.id,
                     event["event_id"], side.side, result.reason, result.detail)
            metrics.refused(result.reason)
            await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id,
                                     f"refused_{result.reason}", cause=event["event_id"])
            return
        if has_link(result):
            wait = await self.limits.link_wait(conv)
            if wait is not None:  # early in the chat: links are held back
                metrics.refused("link_held")
                await self.portal.notice(
                    self.portal.ghost(side.ghost_id), side.room_id, "link_held",
                    cause=event["event_id"],
                    after=links_allowed_after(*wait))
                return
        # The ghost in the PARTNER's room stands for this user.
        target_event_id = await self.portal.send(
            partner.ghost_id, partner.room_id, event["type"], result,
            txn_id("relay", event["event_id"]))
        metrics.relayed()
        await relayed.record(self.pool, event["event_id"], conv.id, partner.room_id,
                             target_event_id)
        keep = self.config["bridge.moderation.evidence_messages"]
        body = result.get("body")
        if keep and isinstance(body, str):
            # The rolling evidence buffer (what was relayed, sanitised): a report's evidence.
            await evidence.append(self.pool, conv.id, side.side, body, keep)

    async def content_for(self, side: Side, target: Side, event: dict,
                          counterpart: Callable[[str], Awaitable[str | None]]) -> dict | Refused:
        """The event's content for the target's room, sent by the target's ghost: its
        attachment copied for that room, event IDs it points at mapped by `counterpart`,
        and the whole through sanitise(). (The partner's room; question mode's watch room
        gets its copy the same way.)"""
        mapping = {}
        for event_id in referenced_event_ids(event.get("content")):
            mapping[event_id] = await counterpart(event_id)
        media = None
        if kind_of(event["type"], event.get("content")) is not None:
            # Copied (downloaded, cleaned, uploaded as the target's ghost) before
            # sanitising: sanitise builds the content from the copy, never from the
            # sender's attachment.
            media = await self.media.copy(side, target, event)
            if isinstance(media, Refused):
                return media
        return sanitise(event["type"], event.get("content"), map_event_id=mapping.get,
                        max_body_bytes=self.config["bridge.max_body_bytes"], media=media)

    async def _redact(self, conv: Conversation, side: Side, event: dict) -> None:
        """The user took back one of their relayed messages or reactions: the ghost takes
        back its copy (without the reason, which is free text). A redaction of something
        that never crossed has nothing to mirror and nothing to tell."""
        original = redacted_event_id(event)
        copy = await relayed.target_of(self.pool, original) if original else None
        if copy is None:
            return
        partner = conv.partner_of(side)
        redaction = await self.portal.redact(partner.ghost_id, partner.room_id, copy,
                                             txn_id("redact", event["event_id"]))
        await relayed.record(self.pool, event["event_id"], conv.id, partner.room_id, redaction)

    async def call_content(self, conv: Conversation, side: Side, event: dict) -> dict | Refused | None:
        """A 1:1 call event for the partner, its IDs swapped for their stand-ins."""
        if event["type"] in GROUP_CALL_NOTIFY_TYPES:
            return None
        if not self.config["bridge.calls.enabled"]:
            # Told once, at the invite; the rest of the call's signalling goes nowhere.
            return Refused("calls_disabled") if event["type"] == "m.call.invite" else None
        ids = await call_ids.resolve(self.pool, conv.id, side.side, *ids_of(event.get("content")))
        return sanitise_call(event["type"], event.get("content"), ids,
                             force_relay=self.config["bridge.calls.force_relay"])
