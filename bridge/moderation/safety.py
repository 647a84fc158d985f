"""What users do for their own safety (!report, !block) and what follows a restriction: the
user's live chat ends (their partner sees only that the stranger disconnected), they leave the
queue, and they are told why. Also the automatic suspension pending review."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable

import asyncpg

from bridge.i18n import messages
from bridge.metrics import definitions as metrics
from bridge.moderation import evidence, moderation_log, reports, rules, sanctions
from bridge.moderation.enforcement import Enforcer
from bridge.moderation.restriction import Restriction
from bridge.moderation.restrictions import restriction_of
from bridge.moderation.statement import until_text
from bridge.pairing import Pairing
from bridge.portal import BLOCKED, REPORTED
from bridge.replies import Reply
from bridge.store import conversations, recent_pairs
from bridge.store.conversations import Conversation, Side

log = logging.getLogger("bridge.moderation")

# (message key, cause, values): a message in the moderation room.
Post = Callable[..., Awaitable[None]]
AUTOMATIC = "automatic"


class Safety:
    def __init__(self, pool: asyncpg.Pool, pairing: Pairing) -> None:
        self.pool = pool
        self.pairing = pairing
        self.config = pairing.config
        # Set at start-up: a message to the moderators (nothing when there is no room).
        self.post: Post | None = None
        # The one way a restricted user is stopped (policy rules use it too).
        self.enforcer = Enforcer(pool, self.config, pairing, pairing.notify_dm)

    @property
    def grace(self) -> float:
        return self.config["bridge.moderation.evidence_grace"]

    async def to_moderators(self, key: str, cause: str, **values: str) -> None:
        if self.post is None:
            log.warning("No moderation room: %s not posted", key)
            return
        await self.post(key, cause, **values)

    async def recent_conversation(self, user_id: str) -> tuple[Conversation, Side] | None:
        """The user's live conversation, or the one that ended within the evidence grace
        period (a !report or !block "just after" the chat)."""
        side = await conversations.live_side_of(self.pool, user_id)
        conversation_id = side.conversation_id if side else await self.pool.fetchval(
            """SELECT c.id FROM conversation_sides s JOIN conversations c
                 ON c.id = s.conversation_id
               WHERE s.user_id = $1 AND c.state = 'ended'
                 AND c.ended_at > now() - make_interval(secs => $2)
               ORDER BY c.ended_at DESC LIMIT 1""", user_id, float(self.grace))
        if conversation_id is None:
            return None
        conv = await conversations.get(self.pool, conversation_id)
        return conv, conv.side_of(user_id)

    # -- users' commands ----------------------------------------------------------------------

    async def report(self, user_id: str, reason: str) -> Reply:
        found = await self.recent_conversation(user_id)
        if found is None:
            return Reply("report_nothing")
        conv, side = found
        partner = conv.partner_of(side)
        report = await reports.file(self.pool, conv.id, user_id, partner.user_id, partner.side,
                                    reason[:500])
        if report is None:
            return Reply("report_already")
        metrics.reported()
        # Ends for both at once; the reported side sees only that the stranger disconnected.
        await self.pairing.end(conv.id, REPORTED, user_id)
        said = await evidence.of_side(self.pool, conv.id, partner.side)
        await self.to_moderators(
            "mod_report", f"report {report.id}", id=str(report.id), reporter=user_id,
            reported=partner.user_id, reason=report.reason or messages.phrase("no_reason_given"),
            count=str(len(said)), evidence=rules.evidence_text(said))
        await self.consider_auto_suspension(partner.user_id)
        return Reply("report_received")

    async def block(self, user_id: str) -> Reply:
        found = await self.recent_conversation(user_id)
        if found is None:
            return Reply("block_nothing")
        conv, side = found
        # Before the end: a requeued user must never be offered the one they blocked.
        await recent_pairs.avoid(self.pool, user_id, conv.partner_of(side).user_id,
                                blocked_by=user_id)
        if side.live:
            await self.pairing.end(conv.id, BLOCKED, user_id, requeue=[user_id])
            return Reply("blocked_requeued")
        return Reply("blocked")

    # -- restrictions -------------------------------------------------------------------------

    async def restrict(self, user_id: str, kind: str, reason: str, seconds: float | None,
                       source: str, by: str | None) -> Restriction:
        """Record a new sanction (and who decided it), then enforce what is in force now.
        Returns the new sanction."""
        now = datetime.now(timezone.utc)
        until = None if seconds is None else now + timedelta(seconds=seconds)
        added = Restriction(kind, reason, until, source)
        sanction_id = await sanctions.add(self.pool, user_id, kind, reason, until, source, by)
        metrics.sanctioned(kind, source)
        await moderation_log.record(self.pool, by or AUTOMATIC, kind, user_id,
                                    f"{reason} ({messages.render(until_text(added)).strip()})")
        await self.enforce(user_id, await restriction_of(self.pool, self.config, user_id, now),
                           f"sanction {sanction_id}")
        return added

    async def enforce(self, user_id: str, restriction: Restriction | None, cause: str) -> None:
        """A restriction started (`cause`: which, once per message sent): end the user's live
        chat, take them out of the queue, and tell them why."""
        if restriction is not None:
            await self.enforcer.stop(user_id, restriction, cause, tell_anyway=True)

    async def enforce_server(self, server: str) -> int:
        """A server was banned: enforce on each of its users chatting or waiting now."""
        affected = [user_id for user_id in await self.enforcer.active_users()
                    if rules.server_of(user_id) == server]
        now = datetime.now(timezone.utc)
        for user_id in affected:
            await self.enforce(user_id, await restriction_of(self.pool, self.config, user_id, now),
                               f"server {server} {now.isoformat()}")
        return len(affected)

    async def consider_auto_suspension(self, user_id: str) -> bool:
        """Suspend pending review when the user's recent reports weigh enough (see
        rules.report_weight); the moderators are told. True when suspended now."""
        threshold = self.config["bridge.moderation.auto_suspend.reporters"]
        if threshold <= 0:
            return False
        now = datetime.now(timezone.utc)
        if await restriction_of(self.pool, self.config, user_id, now) is not None:
            return False
        window = self.config["bridge.moderation.auto_suspend.window"]
        standings = await reports.standings_of_reporters(self.pool, user_id, window)
        chats = await conversations.count_since(self.pool, user_id, window)
        if not rules.should_auto_suspend(
                standings, threshold, chats,
                self.config["bridge.moderation.auto_suspend.min_share"]):
            return False
        seconds = rules.auto_suspension_seconds(
            self.config["bridge.moderation.auto_suspend.duration"],
            await sanctions.count_automatic(self.pool, user_id))
        restriction = await self.restrict(user_id, "suspended",
                                          messages.text("auto_suspension_reason"), seconds,
                                          AUTOMATIC, None)
        await self.to_moderators(
            "mod_auto_suspended", f"auto {user_id} {restriction.until}", user=user_id,
            until=until_text(restriction), reporters=str(len(standings)),
            weight=f"{rules.reports_weight(standings):.2f}")
        return True

    async def purge_evidence(self) -> int:
        return await evidence.purge(self.pool, self.grace)
