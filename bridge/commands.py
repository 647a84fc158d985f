"""The bot's commands: one small function each. They return the key of the reply."""
from __future__ import annotations

import logging
import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

import asyncpg

from bridge.i18n import messages
from bridge.i18n import catalogs
from bridge.i18n.language import native_name
from bridge.i18n.notices import languages_spoken
from bridge.matching import policy
from bridge.matching import queue
from bridge.moderation.limits import Limits
from bridge.moderation.restrictions import restriction_of
from bridge.moderation.statement import statement_values
from bridge.pairing import Pairing
from bridge.portal import NEXT, RESTRICTED, STOP
from bridge.privacy.forget import Forgetting
from bridge.replies import Parsed, Reply
from bridge.store import conversations, users
from bridge.store.conversations import Side

if TYPE_CHECKING:
    from bridge.reveal.exchange import Reveal

log = logging.getLogger("bridge.commands")

# `!interests clear`, `!lang clear` (and these synonyms) forget the preference.
CLEAR_WORDS = frozenset({"clear", "none", "off", "any", "-"})


class Commands:
    """Commands a user can send in their DM with the bot (and some in their chat room)."""

    # The commands that also work inside a chat room; any other !text there is chat.
    IN_CHAT_ROOM = frozenset({"next", "stop", "help", "status", "report", "block", "reveal"})
    # Answered where they were sent (by the user's own room's ghost: the partner never sees
    # that room); the others' answers go to the DM.
    ANSWERED_IN_CHAT_ROOM = frozenset({"help", "status", "reveal"})

    def __init__(self, pool: asyncpg.Pool, pairing: Pairing, limits: Limits | None = None,
                 safety=None, reveal: Reveal | None = None,
                 forgetting: Forgetting | None = None) -> None:
        self.pool = pool
        self.pairing = pairing
        self.config = pairing.config
        self.limits = limits or Limits(pool, self.config)
        self.safety = safety  # bridge.moderation.safety.Safety: !report and !block
        # Each takes (user_id, the command's arguments).
        self.table: dict[str, Callable[[str, str], Awaitable[str | Reply]]] = {
            "help": self.help, "agree": self.agree, "start": self.start,
            "next": self.next, "stop": self.stop, "interests": self.interests,
            "lang": self.lang, "status": self.status,
        }
        if safety is not None:
            self.table.update(report=self.report, block=self.block)
        # Commands about the chat of the room they were sent in (not the user's chat now:
        # a room of an ended chat stays theirs). Each takes (that side, the arguments).
        self.in_room: dict[str, Callable[[Side, str], Awaitable[Reply | None]]] = {}
        if reveal is not None:
            self.table["reveal"] = self.reveal_in_dm
            self.in_room["reveal"] = reveal.command
        self.forgetting = forgetting or Forgetting(
            pool, pairing, safety.enforcer if safety is not None else None)
        self.table["forget"] = self.forgetting.command  # in the DM only (not IN_CHAT_ROOM)

    async def run(self, user_id: str, command: Parsed, side: Side | None = None) -> Reply | None:
        """Run a command of `user_id`'s, sent in their DM or (`side`) in a chat room of
        theirs; its reply (None: it said all it had to itself)."""
        if side is not None and command.name in self.in_room:
            return await self.in_room[command.name](side, command.args)
        func = self.table.get(command.name)
        if func is None:
            return Reply("unknown_command")
        result = await func(user_id, command.args)
        return result if isinstance(result, Reply) else Reply(result)

    async def reveal_in_dm(self, user_id: str, args: str = "") -> str:
        return "reveal_in_chat_only"  # the DM has no stranger to exchange contacts with

    async def _agreed(self, user_id: str) -> bool:
        user = await users.get(self.pool, user_id)
        return user is not None and user.agreed

    async def help(self, user_id: str, args: str = "") -> Reply:
        return Reply("help", {"languages": languages_spoken()})

    async def agree(self, user_id: str, args: str = "") -> str:
        await users.ensure(self.pool, user_id)
        return "agreed" if await users.agree(self.pool, user_id) else "already_agreed"

    async def _restricted(self, user_id: str) -> Reply | None:
        """The statement of reasons for a user who may not chat now."""
        restriction = await restriction_of(self.pool, self.config, user_id,
                                           datetime.now(timezone.utc))
        if restriction is None:
            return None
        # The statement of reasons: what, why, until when, decided how.
        return Reply("restricted", statement_values(restriction))

    async def too_soon(self, user_id: str) -> Reply | None:
        """A cooldown (churn, or after a flood) keeps the user from a new partner for now.
        Asking counts as a start when allowed (also when leaving a chat room, which finds
        someone new)."""
        refused = await self.limits.start(user_id)
        if refused is None:
            return None
        key, until = refused
        wait = math.ceil((until - datetime.now(timezone.utc)).total_seconds())
        return Reply(key, {"wait": messages.duration(max(1, wait))})

    async def start(self, user_id: str, args: str = "") -> str | Reply:
        """`!start` or `!start cinema, jazz` (which also sets the interests)."""
        if not await self._agreed(user_id):
            return "must_agree"
        if refused := await self._restricted(user_id):
            return refused
        if args:
            try:
                tags = self._parse_tags(args)
            except policy.PreferenceError as e:
                return Reply(e.key, e.values)
            await users.set_tags(self.pool, user_id, tags)
        if await conversations.live_side_of(self.pool, user_id):
            return "already_chatting"
        if not await queue.is_waiting(self.pool, user_id) and (
                refused := await self.too_soon(user_id)):
            return refused
        if await self.pairing.enqueue(user_id):
            return await self._queued(user_id)
        if args and await self.pairing.preferences_changed(user_id):
            return Reply("interests_set", {"tags": messages.Listing(tags),
                                           "when": messages.phrase("preferences_apply_now")})
        return "already_waiting"

    async def _queued(self, user_id: str) -> str | Reply:
        tags, lang = await users.preferences(self.pool, user_id)
        fallback = self.config["bridge.matching.fallback_after"]
        if not (tags or lang) or not fallback:
            return "queued"
        either = messages.Listing(tags, "list_separator_or")
        wanted = (messages.phrase("wanted_both", tags=either, lang=lang) if tags and lang
                  else messages.phrase("wanted_tags", tags=either) if tags
                  else messages.phrase("wanted_lang", lang=lang))
        return Reply("queued_with_preferences", {"wanted": wanted, "fallback": f"{fallback:g}"})

    def _parse_tags(self, text: str) -> tuple[str, ...]:
        return policy.parse_tags(text, self.config["bridge.matching.max_tags"],
                                   self.config["bridge.matching.max_tag_length"])

    async def _applied(self, user_id: str) -> messages.Phrase:
        """Preferences changed: take them up in the queue; say when they count."""
        if await self.pairing.preferences_changed(user_id):
            return messages.phrase("preferences_apply_now")
        return messages.phrase("preferences_apply_next")

    async def interests(self, user_id: str, args: str = "") -> str | Reply:
        """`!interests` shows them, `!interests cinema, jazz` sets, `!interests clear` forgets."""
        if not await self._agreed(user_id):
            return "must_agree"
        if not args:
            tags, _ = await users.preferences(self.pool, user_id)
            return (Reply("interests_show", {"tags": messages.Listing(tags)}) if tags
                    else "interests_none")
        try:
            tags = () if args.casefold() in CLEAR_WORDS else self._parse_tags(args)
        except policy.PreferenceError as e:
            return Reply(e.key, e.values)
        await users.set_tags(self.pool, user_id, tags)
        when = await self._applied(user_id)
        if not tags:
            return Reply("interests_cleared", {"when": when})
        return Reply("interests_set", {"tags": messages.Listing(tags), "when": when})

    async def lang(self, user_id: str, args: str = "") -> str | Reply:
        """`!lang` shows it, `!lang fr` sets it, `!lang clear` forgets it. One setting: the
        language of the strangers preferred, and the one the bot (and the ghosts) write in
        when there is a catalog for it (the reply is already in it)."""
        if not await self._agreed(user_id):
            return "must_agree"
        if not args:
            _, lang = await users.preferences(self.pool, user_id)
            return Reply("lang_show", {"lang": lang}) if lang else "lang_none"
        try:
            lang = None if args.casefold() in CLEAR_WORDS else policy.normalise_lang(args)
        except policy.PreferenceError as e:
            return Reply(e.key, e.values)
        await users.set_lang(self.pool, user_id, lang)
        when = await self._applied(user_id)
        if lang is None:
            return Reply("lang_cleared", {"when": when})
        if lang not in catalogs.shipped():
            return Reply("lang_set_unsupported", {
                "lang": lang, "when": when,
                "default": native_name(self.config["bridge.default_language"])})
        return Reply("lang_set", {"lang": lang, "when": when})

    async def status(self, user_id: str, args: str = "") -> str | Reply:
        """Waiting, chatting or idle; for how long; how many people wait and chat now."""
        if not await self._agreed(user_id):
            return "must_agree"
        tags, lang = await users.preferences(self.pool, user_id)
        values = {
            "waiting": str(await queue.count(self.pool)),
            "chatting": str(await conversations.count_chatting(self.pool)),
            "preferences": messages.phrase(
                "status_preferences",
                tags=messages.phrase("status_tags", tags=messages.Listing(tags)) if tags else "",
                lang=messages.phrase("status_lang", lang=lang) if lang else ""),
        }
        now = datetime.now(timezone.utc)
        since = await conversations.live_since(self.pool, user_id)
        if since is not None:
            return Reply("status_chatting",
                         {**values, "duration": messages.duration((now - since).total_seconds())})
        since = await queue.waiting_since(self.pool, user_id)
        if since is not None:
            return Reply("status_waiting",
                         {**values, "duration": messages.duration((now - since).total_seconds())})
        return Reply("status_idle", values)

    async def next(self, user_id: str, args: str = "") -> str | Reply:
        side = await conversations.live_side_of(self.pool, user_id)
        if side is None:
            return await self.start(user_id)
        if refused := await self._restricted(user_id):
            await self.pairing.end(side.conversation_id, RESTRICTED, user_id)
            return refused
        if refused := await self.too_soon(user_id):
            return refused  # the chat goes on
        if await self.pairing.end(side.conversation_id, NEXT, user_id, requeue=[user_id]):
            return "requeued"
        # The partner ended it in the same moment: the user still asked for someone new.
        return await self.start(user_id)

    async def stop(self, user_id: str, args: str = "") -> str:
        side = await conversations.live_side_of(self.pool, user_id)
        if side is not None:
            await self.pairing.end(side.conversation_id, STOP, user_id)
            return "stopped_chat"
        if await queue.dequeue(self.pool, user_id):
            return "stopped_waiting"
        return "nothing_to_stop"

    async def report(self, user_id: str, args: str = "") -> Reply | str:
        """`!report [reason]`, during a chat or just after it."""
        if not await self._agreed(user_id):
            return "must_agree"
        return await self.safety.report(user_id, args)

    async def block(self, user_id: str, args: str = "") -> Reply | str:
        """`!block`: end the chat like !next, and never meet this stranger again."""
        if not await self._agreed(user_id):
            return "must_agree"
        return await self.safety.block(user_id)
