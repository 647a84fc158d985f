"""What may pass from a user's chat room to their partner, as far as rate limits go; checked
just before relaying. The partner never sees what is held back. (The link hold is applied by
the relayer to what sanitising leaves: a reply's quoted fallback or a mention pill is not a
link the partner would get.)"""
from __future__ import annotations

from bridge.i18n import messages
from bridge.moderation.limits import Limits
from bridge.moderation.ratelimit import Flood
from bridge.portal import FLOODED
from bridge.store.conversations import Conversation, Side

# conversations.end_reason of a chat ended because a user flooded it.


class ChatGuard:
    def __init__(self, limits: Limits, pairing, portal, notify_dm, prefix: str) -> None:
        self.limits = limits
        self.pairing = pairing
        self.portal = portal
        self.notify_dm = notify_dm
        self.prefix = prefix

    async def allows(self, conv: Conversation, side: Side, event: dict) -> bool:
        """True when the event may be relayed; otherwise the sender has been told why (in their
        own room, by its ghost) or their chat has ended."""
        verdict = self.limits.message(side.user_id)
        if verdict is Flood.WARN:
            await self._notice(side, "flood_warning", event)
            return False
        if verdict is Flood.DROP:
            return False
        if verdict is Flood.END:
            await self.limits.flooded(side.user_id)
            # The partner sees "Stranger has disconnected.", exactly as after a leave.
            if await self.pairing.end(conv.id, FLOODED, side.user_id):
                wait = messages.duration(self.limits.flood_cooldown.total_seconds())
                await self.notify_dm(side.user_id, "flood_ended", f"flood {conv.id}", wait=wait)
            return False
        return True

    async def _notice(self, side: Side, key: str, event: dict, **values: str) -> None:
        await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id, key,
                                 cause=event["event_id"], **values)


def links_allowed_after(messages_left: int, seconds_left: float) -> messages.Value:
    """'7 more messages and 1 min 30 s', '7 more messages' or '1 min 30 s'."""
    count = messages.phrase("link_after_messages", count=str(messages_left)) \
        if messages_left else ""
    time = messages.phrase("link_after_time", duration=messages.duration(seconds_left)) \
        if seconds_left else ""
    return messages.phrase("link_after_both", messages=count, time=time) if count and time \
        else count or time
