"""Moderator commands, in the moderation room only and from bridge.admins only. Every action
is recorded in moderation_log (who, when, what, why)."""
from __future__ import annotations

from datetime import datetime, timezone

import asyncpg

from bridge.i18n import messages
from bridge.metrics import definitions as metrics
from bridge.matching import queue
from bridge.moderation import rules
from bridge.moderation import moderation_log, reports, sanctions, server_bans
from bridge.moderation.rules import ModerationInputError
from bridge.moderation.safety import Safety
from bridge.moderation.statement import until_text
from bridge.replies import Parsed, Reply
from bridge.store import conversations

LISTED_REPORTS = 20


class ModeratorCommands:
    def __init__(self, pool: asyncpg.Pool, safety: Safety) -> None:
        self.pool = pool
        self.safety = safety
        self.config = safety.config
        self.table = {
            "help": self.help, "reports": self.reports, "dismiss": self.dismiss,
            "ban": self.ban, "suspend": self.suspend, "unban": self.unban,
            "banserver": self.banserver, "unbanserver": self.unbanserver,
            "counts": self.counts,
        }

    def is_admin(self, user_id: str) -> bool:
        return user_id in self.config["bridge.admins"]

    async def run(self, moderator: str, command: Parsed) -> Reply:
        func = self.table.get(command.name)
        if func is None:
            return Reply("mod_unknown_command")
        try:
            return await func(moderator, command.args)
        except ModerationInputError as e:
            return Reply(e.key, e.values)

    async def help(self, moderator: str, args: str) -> Reply:
        return Reply("mod_help")

    async def reports(self, moderator: str, args: str) -> Reply:
        listed = await reports.open_reports(self.pool, LISTED_REPORTS)
        if not listed:
            return Reply("mod_no_reports")
        now = datetime.now(timezone.utc)
        lines = messages.Lines(tuple(
            messages.phrase("mod_report_line", id=str(r.id), reporter=r.reporter,
                            reported=r.reported,
                            age=messages.duration((now - r.created_at).total_seconds()),
                            reason=r.reason or messages.phrase("no_reason_given"))
            for r in listed))
        return Reply("mod_reports", {"count": str(await reports.count_open(self.pool)),
                                     "lines": lines})

    async def dismiss(self, moderator: str, args: str) -> Reply:
        head, _, reason = args.partition(" ")
        report_id = head.lstrip("#")
        if not report_id.isdigit() or len(report_id) > 18:
            return Reply("mod_usage", {"usage": "dismiss <report id> [reason]"})
        if not await reports.resolve(self.pool, int(report_id), "dismissed", moderator):
            return Reply("mod_no_such_report", {"id": report_id})
        await moderation_log.record(self.pool, moderator, "dismiss", f"report {report_id}",
                                    reason.strip())
        return Reply("mod_dismissed", {"id": report_id})

    def _target(self, text: str) -> str:
        user_id = rules.user_id(text)
        if self.is_admin(user_id):
            raise ModerationInputError("mod_not_admin_target", user=user_id)
        return user_id

    async def ban(self, moderator: str, args: str) -> Reply:
        """ban <user> [duration|forever] <reason>"""
        words = args.split()
        if not words:
            return Reply("mod_usage", {"usage": "ban <user> [duration|forever] <reason>"})
        user_id = self._target(words[0])
        seconds = None
        if len(words) > 1 and (rules.looks_like_duration(words[1])
                               or words[1].lower() in rules.FOREVER_WORDS):
            seconds = rules.parse_duration(words[1])
            words = words[:1] + words[2:]
        return await self._restrict(moderator, user_id, "banned", seconds, " ".join(words[1:]))

    async def suspend(self, moderator: str, args: str) -> Reply:
        """suspend <user> <duration> <reason>"""
        words = args.split()
        if len(words) < 2:
            return Reply("mod_usage", {"usage": "suspend <user> <duration> <reason>"})
        user_id = self._target(words[0])
        seconds = rules.parse_duration(words[1])
        return await self._restrict(moderator, user_id, "suspended", seconds, " ".join(words[2:]))

    async def _restrict(self, moderator: str, user_id: str, kind: str, seconds: float | None,
                        reason: str) -> Reply:
        if not reason:
            return Reply("mod_reason_needed")
        added = await self.safety.restrict(user_id, kind, reason, seconds, "moderator",
                                           moderator)
        await reports.resolve_against(self.pool, user_id, "actioned", moderator)
        return Reply(f"mod_{kind}", {"user": user_id, "until": until_text(added),
                                     "reason": reason})

    async def unban(self, moderator: str, args: str) -> Reply:
        head, _, reason = args.partition(" ")
        if not head:
            return Reply("mod_usage", {"usage": "unban <user> [reason]"})
        user_id = rules.user_id(head)
        if not await sanctions.lift(self.pool, user_id, moderator):
            return Reply("mod_not_restricted", {"user": user_id})
        await moderation_log.record(self.pool, moderator, "unban", user_id, reason.strip())
        return Reply("mod_unbanned", {"user": user_id})

    async def banserver(self, moderator: str, args: str) -> Reply:
        head, _, reason = args.partition(" ")
        if not head:
            return Reply("mod_usage", {"usage": "banserver <server> <reason>"})
        server = rules.server_name(head)
        if not reason.strip():
            return Reply("mod_reason_needed")
        if any(rules.server_of(admin) == server for admin in self.config["bridge.admins"]):
            raise ModerationInputError("mod_not_admin_target", user=server)
        await server_bans.ban(self.pool, server, reason.strip(), moderator)
        metrics.sanctioned("server_banned", "moderator")
        await moderation_log.record(self.pool, moderator, "banserver", server, reason.strip())
        affected = await self.safety.enforce_server(server)
        return Reply("mod_server_banned", {"server": server, "reason": reason.strip(),
                                           "affected": str(affected)})

    async def unbanserver(self, moderator: str, args: str) -> Reply:
        head, _, reason = args.partition(" ")
        if not head:
            return Reply("mod_usage", {"usage": "unbanserver <server> [reason]"})
        server = rules.server_name(head)
        if not await server_bans.unban(self.pool, server):
            return Reply("mod_server_not_banned", {"server": server})
        await moderation_log.record(self.pool, moderator, "unbanserver", server, reason.strip())
        return Reply("mod_server_unbanned", {"server": server})

    async def counts(self, moderator: str, args: str) -> Reply:
        return Reply("mod_counts", {
            "waiting": str(await queue.count(self.pool)),
            "chatting": str(await conversations.count_chatting(self.pool)),
            "conversations": str(await conversations.count_live(self.pool)),
            "reports": str(await reports.count_open(self.pool)),
            "restricted": str(await sanctions.count_in_force(self.pool)),
            "servers": str(await server_bans.count(self.pool)),
        })
