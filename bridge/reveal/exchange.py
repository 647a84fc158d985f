"""!reveal in a chat room: record the request (store), tell the partner of it, and once both
agreed, tell each side the other's Matrix ID in their own chat room, by their own ghost.
Nothing goes through the relay: these notices are the bridge's own, sent only into the two
chat rooms of the conversation (or, when the chat has just ended, the user's DM with the bot).

Exactly once: every notice due is a row of reveal_requests not yet marked sent. It is sent
while its row is held (store.claimed), so two tasks or processes never both send it, and
with a transaction ID derived from the notice, so a resend after a crash (the row still due)
is deduplicated by the homeserver. Start-up sends whatever a crash left due."""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

import asyncpg
from mautrix.errors import MatrixRequestError

from bridge.i18n.language import is_rtl
from bridge.i18n.notices import notice_content
from bridge.portal import Portal, txn_id
from bridge.replies import Reply
from bridge.reveal import consent, store
from bridge.reveal.consent import Outcome
from bridge.reveal.contact import matrix_to, revealed_content
from bridge.reveal.store import Due, Kind
from bridge.store import conversations
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.reveal")

Notify = Callable[..., Awaitable[None]]  # (user_id, message key, cause, **values)

# The requester's answer, in their chat room (None: the reveal notice itself answers).
REPLIES = {
    Outcome.ASKED: "reveal_requested",
    Outcome.ALREADY_ASKED: "reveal_already_requested",
    Outcome.REVEALED: None,
    Outcome.ALREADY_REVEALED: "reveal_already_done",
    Outcome.CANCELLED: "reveal_cancelled",
    Outcome.NOTHING_TO_CANCEL: "reveal_nothing_to_cancel",
    Outcome.TOO_LATE: "reveal_too_late",
    Outcome.NOT_YET: "reveal_not_yet",
    Outcome.ENDED: "reveal_chat_ended",
}
# What the partner is told of a side's request.
PARTNER_NOTICES = {Kind.ASKED: "reveal_asked", Kind.WITHDRAWN: "reveal_withdrawn"}


class Reveal:
    def __init__(self, pool: asyncpg.Pool, portal: Portal, notify_dm: Notify,
                 prefix: str) -> None:
        self.pool = pool
        self.portal = portal
        self.notify_dm = notify_dm  # the fallback for a reveal decided as the chat ended
        self.prefix = prefix
        # A notice is sent while a connection holds its row, and sending may read the
        # database too (room state, the user's DM); a decision waits on the rows being sent.
        # So few sends at once: whatever the load, their connections and the decisions
        # waiting on them (two per conversation at most) leave one for those reads.
        self._sending = asyncio.Semaphore(max(1, (pool.get_max_size() - 1) // 3))

    async def command(self, side: Side, args: str) -> Reply | None:
        """`!reveal` or `!reveal cancel`, sent in `side`'s chat room (also one whose chat
        has ended: that does nothing)."""
        action = consent.parse(args)
        if action is None:
            return Reply("reveal_usage")
        outcome = await store.decide_and_record(self.pool, side.conversation_id, side.side,
                                                action)
        log.info("Conversation %d: side %d %s: %s", side.conversation_id, side.side,
                 action.value, outcome.value)
        sent = await self.deliver(side.conversation_id)
        # Handled again after a crash, the decision reads as a repeat; what it had left
        # unsaid was sent just now, and the answer is the one first meant.
        mine = {(n.kind, n.side) for n in sent}
        if outcome is Outcome.ALREADY_ASKED and (Kind.ASKED, side.side) in mine:
            outcome = Outcome.ASKED
        if outcome is Outcome.ALREADY_REVEALED and (Kind.REVEALED, side.side) in mine:
            outcome = Outcome.REVEALED
        key = REPLIES[outcome]
        return Reply(key) if key else None

    async def deliver(self, conversation_id: int | None = None) -> list[Due]:
        """Send every notice due (of one conversation, or all of them: at start-up); the
        ones this call sent."""
        sent, convs = [], {}
        for notice in await store.pending(self.pool, conversation_id):
            conv = convs.get(notice.conversation_id)
            if conv is None:
                conv = convs[notice.conversation_id] = await conversations.get(
                    self.pool, notice.conversation_id)
            async with self._sending, store.claimed(self.pool, notice) as held:
                if not held:
                    continue  # no longer due, or being sent by someone else right now
                # (What _send reads of the conversation, its rooms, ghosts and users, never
                # changes once it is active; whether it is still active is read anew.)
                await self._send(conv, notice)
            sent.append(notice)
        return sent

    async def _revealed(self, room_id: str, partner_id: str) -> dict:
        language = await self.portal.language(room_id)
        return revealed_content("reveal_done", partner_id, self.prefix, language,
                                is_rtl(language))

    async def _send(self, conv: Conversation, notice: Due) -> None:
        txn = txn_id("reveal", notice.kind.value, conv.id, notice.side, notice.round)
        if notice.kind is not Kind.REVEALED:
            # Into the partner's room, by the partner's ghost: it stands for the requester.
            partner = conv.sides[1 - notice.side]
            content = notice_content(await self.portal.language(partner.room_id),
                                     PARTNER_NOTICES[notice.kind],
                                     prefix=self.prefix).serialize()
            try:
                await self.portal.send(partner.ghost_id, partner.room_id, "m.room.message",
                                       content, txn)
            except MatrixRequestError as e:
                if e.http_status >= 500 or e.http_status == 429:
                    raise  # transient: still due, sent again
                # (The chat ended as it was sent: the ghost has left; nobody to tell.)
                log.info("Conversation %d: %s notice not sent: %s", conv.id,
                         notice.kind.value, e)
            return
        side, partner = conv.sides[notice.side], conv.sides[1 - notice.side]
        if await store.chat_is_on(self.pool, conv.id):
            try:
                await self.portal.send(side.ghost_id, side.room_id, "m.room.message",
                                       await self._revealed(side.room_id, partner.user_id), txn)
                log.info("Conversation %d: side %d told the partner's ID", conv.id, side.side)
                return
            except MatrixRequestError as e:
                if e.http_status >= 500 or e.http_status == 429:
                    raise  # transient: still due, sent again
                # The ghost is gone from the room (the chat ended meanwhile): the DM it is.
                log.info("Conversation %d: reveal to side %d not sent in the room: %s",
                         conv.id, side.side, e)
        # The chat ended (the user may have left the room): they learn it in their DM.
        await self.notify_dm(side.user_id, "reveal_done_dm", txn,
                             contact=f"{partner.user_id} ({matrix_to(partner.user_id)})")
        log.info("Conversation %d: side %d told the partner's ID in the DM", conv.id, side.side)
