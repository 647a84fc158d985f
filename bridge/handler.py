"""Decides what each incoming event means: the bot's DMs, chat rooms, or nothing of ours."""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import asyncpg
from mautrix.appservice import AppService
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import EventType

from bridge.commands import Commands
from bridge.config import Config
from bridge.dispatcher import Outcome
from bridge.encryption.crypto import Crypto, Undecryptable
from bridge.group_calls import GROUP_CALL_STATE_TYPES
from bridge.i18n.notices import language_of_room, languages_spoken, notice_content
from bridge.metrics import definitions as metrics
from bridge.moderation.chat_guard import ChatGuard
from bridge.moderation.enforcement import Enforcer
from bridge.moderation.moderators import ModeratorCommands
from bridge.moderation.policy_lists import PolicyLists
from bridge.moderation.room import ModerationRoom
from bridge.pairing import Pairing
from bridge.portal import LEFT, Portal, txn_id
from bridge.privacy.forget import FORGOTTEN
from bridge.questions.questions import Questions
from bridge.relay.calls import joins_group_call
from bridge.relay.relayer import Relayer
from bridge.replies import parse
from bridge.store import conversations, users
from bridge.store.conversations import Side

log = logging.getLogger("bridge.handler")

LEFT_MEMBERSHIPS = ("leave", "ban")


def event_time(event: dict) -> datetime:
    """When the sender's homeserver says the event was made (now, when it does not say)."""
    ts = event.get("origin_server_ts")
    if isinstance(ts, int) and not isinstance(ts, bool) and 0 < ts < 2**53:
        return datetime.fromtimestamp(ts / 1000, timezone.utc)
    return datetime.now(timezone.utc)


class Handler:
    crypto: Crypto | None = None  # set once started, when bridge.encryption.allow
    # Set once started: the policy lists followed, and who stops users a rule restricts.
    policy: PolicyLists | None = None
    enforcer: Enforcer | None = None
    # Set at start-up: the moderation room and the commands given there.
    moderation_room: ModerationRoom | None = None
    moderators: ModeratorCommands | None = None
    # Set at start-up: question mode (watch rooms, mirroring to them).
    questions: Questions | None = None

    def __init__(self, appservice: AppService, pool: asyncpg.Pool, config: Config,
                 portal: Portal, pairing: Pairing, commands: Commands, relayer: Relayer) -> None:
        self.appservice = appservice
        self.pool = pool
        self.config = config
        self.portal = portal
        self.pairing = pairing
        self.commands = commands
        self.relayer = relayer
        self.prefix = config["bridge.command_prefix"]
        self.limits = commands.limits
        self.guard = ChatGuard(self.limits, pairing, portal, self.notify_dm, self.prefix)

    @property
    def bot(self):
        return self.appservice.intent

    def is_ours(self, user_id: str) -> bool:
        return user_id == self.config.bot_mxid or self.config.is_ghost(user_id)

    def is_moderation_room(self, room_id: str) -> bool:
        return self.moderation_room is not None and room_id == self.moderation_room.room_id

    async def reply(self, room_id: str, key: str, cause: str, **values) -> None:
        """The bot says `key` in a room (in the language of the user whose DM it is)."""
        language = await language_of_room(self.pool, room_id,
                                          self.config["bridge.default_language"])
        content = notice_content(language, key, prefix=self.prefix, **values)
        event_type = EventType.ROOM_MESSAGE
        if self.crypto and await self.crypto.is_encrypted(room_id):
            _, content = await self.crypto.encrypt(room_id, "m.room.message", content.serialize())
            event_type = EventType.ROOM_ENCRYPTED
        await self.bot.send_message_event(room_id, event_type, content,
                                          txn_id=txn_id("reply", room_id, cause))

    async def notify_dm(self, user_id: str, key: str, cause: str, **values) -> None:
        user = await users.get(self.pool, user_id)
        if user and user.dm_room_id:
            await self.reply(user.dm_room_id, key, f"{user_id}|{cause}", **values)

    # -- routing ------------------------------------------------------------------------------

    async def handle(self, event: dict) -> Outcome:
        if self.policy is not None and event["room_id"] in self.policy.rooms:
            # A moderation policy room: only its rules matter (set, changed, lifted).
            rule = await self.policy.handle(event)
            if rule is not None and self.enforcer is not None:
                await self.enforcer.after_rule(rule)
            return Outcome.DONE
        if self.crypto and "state_key" in event:
            await self.crypto.handle_state(event)
            if event["type"] == "m.room.encryption":
                await self.on_encryption_enabled(event["room_id"])
        if event["type"] == "m.room.member" and isinstance(event.get("state_key"), str):
            return await self.on_member(event)
        if event["type"] in GROUP_CALL_STATE_TYPES and not self.is_ours(event["sender"]):
            await self.on_group_call_member(event)
        if self.is_ours(event["sender"]) or "state_key" in event:
            return Outcome.DONE
        room_id, sender = event["room_id"], event["sender"]
        if self.is_moderation_room(room_id):
            await self.on_moderation_event(event)
            return Outcome.DONE
        if await users.get_by_dm_room(self.pool, room_id, sender):
            await self.on_dm_event(event)
            return Outcome.DONE
        if self.questions is not None and await self.questions.on_watch_event(event):
            return Outcome.DONE  # a watch room: read-only, nothing in it goes anywhere
        side = await conversations.side_by_room(self.pool, room_id)
        if side is not None and side.user_id == sender:
            return await self.on_chat_event(side, event)
        return Outcome.DONE

    # -- memberships --------------------------------------------------------------------------

    async def on_member(self, event: dict) -> Outcome:
        target, sender = event["state_key"], event["sender"]
        membership = event["content"].get("membership")
        room_id = event["room_id"]
        if target == self.config.bot_mxid:
            if self.is_moderation_room(room_id):
                return Outcome.DONE  # joined at start-up; never a DM
            if membership == "invite" and not self.is_ours(sender):
                await self.on_bot_invited(room_id, sender, event["event_id"])
            elif membership in LEFT_MEMBERSHIPS:
                await users.clear_dm_room(self.pool, room_id)
            return Outcome.DONE
        if self.is_ours(target):
            if membership == "invite" and not self.is_ours(sender):
                # Ghosts only live in rooms the bridge made; refuse any other invitation.
                await self.appservice.intent.user(target).leave_room(room_id)
            return Outcome.DONE
        if membership in LEFT_MEMBERSHIPS and await users.get_by_dm_room(self.pool, room_id, target):
            await users.clear_dm_room(self.pool, room_id)
            await self.bot.leave_room(room_id)
            return Outcome.DONE
        if self.questions is not None and await self.questions.on_watch_member(
                room_id, target, membership):
            return Outcome.DONE
        side = await conversations.side_by_room(self.pool, room_id)
        if side is None or side.user_id != target:
            return Outcome.DONE
        if membership == "join" and side.live:
            await self.pairing.joined(side.conversation_id, side.side)
        elif membership in LEFT_MEMBERSHIPS and (
                side.live or (side.joined_at is not None and sender == target)):
            # (Also their own leave of a chat that has just ended: the partner may have left
            # in the same moment.)
            refused = await self.commands.too_soon(target) if side.live else None
            if refused is None:
                await self.pairing.leave(side.conversation_id, target, event_time(event))
            elif await self.pairing.end(side.conversation_id, LEFT, target):
                # Leaving finds someone new, like !next: not while hopping too fast.
                await self.notify_dm(target, refused.key, f"left {side.conversation_id}",
                                     **refused.values)
        return Outcome.DONE

    async def on_group_call_member(self, event: dict) -> None:
        """Element Call (MatrixRTC) cannot be relayed 1:1: nothing of it crosses, and the
        caller is told so when they join the call (not at each refresh or leave)."""
        side = await conversations.side_by_room(self.pool, event["room_id"])
        if (side is not None and side.live and side.user_id == event["sender"]
                and joins_group_call(event)):
            metrics.refused("group_call")
            await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id,
                                     "refused_group_call", cause=event["event_id"])

    async def on_encryption_enabled(self, room_id: str) -> None:
        """A user turned encryption on in their (plain) chat room: the ghost needs a device
        now, so their client has someone to encrypt for."""
        side = await conversations.side_by_room(self.pool, room_id)
        if side is not None and side.live and self.portal.ghost_devices is not None:
            await self.portal.ghost_devices.get(side.ghost_id)

    async def on_bot_invited(self, room_id: str, inviter: str, event_id: str) -> None:
        if self.policy is not None and self.policy.is_configured(room_id):
            # A policy room the bot could not join at start (invite-only): follow it now.
            if await self.join_invited(self.bot, room_id):
                await self.policy.follow(room_id)
                if self.enforcer is not None:
                    await self.enforcer.enforce_all()  # its rules may stop someone now
            return
        if not self.limits.invite(inviter):
            log.info("Rejected an invite over the invite rate limit")
            await self.bot.leave_room(room_id)  # rejects the invite
            return
        if not await self.join_invited(self.bot, room_id):
            return
        encrypted = await self.dm_is_encrypted(room_id)
        if encrypted and self.crypto is None:
            # bridge.encryption.allow is false: say so (in clear text, the only way we can)
            # rather than sit silent in a room we cannot read.
            await self.refuse_dm(room_id, "encryption_disabled", event_id)
            return
        if not encrypted and self.config["bridge.encryption.require"]:
            await self.refuse_dm(room_id, "encryption_required", event_id)
            return
        await users.set_dm_room(self.pool, inviter, room_id)
        await self.reply(room_id, "greeting", event_id, languages=languages_spoken())

    async def dm_is_encrypted(self, room_id: str) -> bool:
        if self.crypto is not None:
            return await self.crypto.is_encrypted(room_id)
        try:
            await self.bot.get_state_event(room_id, EventType.ROOM_ENCRYPTION, ensure_joined=False)
            return True
        except MNotFound:
            return False

    async def refuse_dm(self, room_id: str, key: str, cause: str) -> None:
        await self.reply(room_id, key, cause)
        await users.clear_dm_room(self.pool, room_id)
        await self.bot.leave_room(room_id)

    @staticmethod
    async def join_invited(intent, room_id: str, attempts: int = 6) -> bool:
        """Join a room we were just invited to. Over federation the join can be refused
        ("not invited") for a moment after the invite arrives, so retry with backoff."""
        delay = 0.25
        for attempt in range(attempts):
            try:
                await intent.join_room_by_id(room_id)
                return True
            except MatrixRequestError as e:
                if e.http_status != 403 or attempt == attempts - 1:
                    if e.http_status >= 500 or e.http_status == 429:
                        raise  # transient: the dispatcher retries the whole event
                    log.warning("Could not join %s after an invite: %s", room_id, e)
                    return False
                await asyncio.sleep(delay)
                delay *= 2
        return False

    # -- messages -----------------------------------------------------------------------------

    async def on_dm_event(self, event: dict) -> None:
        sender, room_id = event["sender"], event["room_id"]
        if event["type"] == "m.room.encrypted" and self.crypto:
            try:
                decrypted = await self.crypto.decrypt(event)
            except Undecryptable as e:
                log.warning("Cannot decrypt %s in %s: %s", event["event_id"], room_id, e)
                decrypted = None
            if decrypted is None:
                metrics.undecryptable("dm")
                await self.reply(room_id, "dm_undecryptable", event["event_id"])
                return
            event = decrypted
        if event["type"] == "m.room.encrypted":  # and encryption is not allowed here
            await self.refuse_dm(room_id, "encryption_disabled", event["event_id"])
            return
        if event["type"] != "m.room.message":
            return
        body = event["content"].get("body")
        command = parse(body, self.prefix) if isinstance(body, str) else None
        if command is None:
            await self.reply(room_id, "not_a_command", event["event_id"])
            return
        reply = await self.commands.run(sender, command)
        await self.reply(room_id, reply.key, event["event_id"],
                         command=f"{self.prefix}{command.name}"[:50], **reply.values)
        if reply.key == FORGOTTEN:
            await self.after_forgotten(sender, room_id)

    async def after_forgotten(self, user_id: str, room_id: str) -> None:
        """The user is forgotten and told: the DM is no longer known as theirs, so the bot
        leaves it (they may invite it again), and drops the device list it kept of them."""
        try:
            await self.bot.leave_room(room_id)
        except MatrixRequestError as e:
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Could not leave a forgotten user's DM %s: %s", room_id, e)
        self.appservice.state_store.forget_room(room_id)
        await self.commands.forgetting.forget_devices(user_id)

    async def on_moderation_event(self, event: dict) -> None:
        """A moderator's command (only admins' messages count; anything else said there is
        the moderators' own talk)."""
        sender, room_id = event["sender"], event["room_id"]
        if self.moderators is None or not self.moderators.is_admin(sender):
            return
        if event["type"] == "m.room.encrypted" and self.crypto:
            try:
                decrypted = await self.crypto.decrypt(event)
            except Undecryptable as e:
                log.warning("Cannot decrypt %s in the moderation room: %s", event["event_id"], e)
                decrypted = None
            if decrypted is None:
                metrics.undecryptable("moderation")
                await self.reply(room_id, "dm_undecryptable", event["event_id"])
                return
            event = decrypted
        if event["type"] != "m.room.message":
            return
        body = event["content"].get("body")
        command = parse(body, self.prefix) if isinstance(body, str) else None
        if command is None:
            return
        reply = await self.moderators.run(sender, command)
        await self.reply(room_id, reply.key, event["event_id"],
                         command=f"{self.prefix}{command.name}"[:50], **reply.values)

    async def on_chat_event(self, side: Side, event: dict) -> Outcome:
        conv = await conversations.get(self.pool, side.conversation_id)
        # A chat that has just ended: the user's commands still count (a !next sent in the
        # same moment as the partner's leave), nothing is relayed any more.
        ended = not side.live or conv.state == "ended"
        if event["type"] == "m.room.encrypted":
            event = await (self.decrypt_late_chat_event(side, event) if ended
                           else self.decrypt_chat_event(side, event))
            if event is None:
                return Outcome.DONE
        # (Only a text message is a command: a picture's caption "!next" is a caption.)
        body = (event["content"].get("body") if event["type"] == "m.room.message"
                and event["content"].get("msgtype") == "m.text" else None)
        command = parse(body, self.prefix) if isinstance(body, str) else None
        if command is not None and command.name in Commands.IN_CHAT_ROOM:
            # Never relayed: the partner must not see the user's commands.
            reply = await self.commands.run(side.user_id, command, side=side)
            if reply is None:
                pass  # (a !reveal that revealed: its notices said it all)
            elif command.name in Commands.ANSWERED_IN_CHAT_ROOM and not ended:
                await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id,
                                         reply.key, cause=event["event_id"], **reply.values)
            else:
                await self.notify_dm(side.user_id, reply.key, event["event_id"], **reply.values)
            return Outcome.DONE
        if ended:
            return Outcome.DONE
        if conv.state == "opening":
            # Held until the partner joins, then relayed in order.
            return Outcome.WAIT
        if not await self.guard.allows(conv, side, event):
            return Outcome.DONE
        await self.relayer.relay(conv, side, event)
        if self.questions is not None:
            # Question mode: what crossed is also shown to the asker. Only here, after the
            # relay: never a command, a reply to one, or a notice of ours.
            await self.questions.mirror(conv, side, event)
        return Outcome.DONE

    async def decrypt_chat_event(self, side: Side, event: dict) -> dict | None:
        """What the user wrote in their encrypted chat room, read by the ghost's own device;
        None (after telling them) when it cannot be read: never relayed as garbage."""
        devices = self.portal.ghost_devices
        if devices is None:
            key = "refused_encrypted"
        else:
            try:
                decrypted = await (await devices.get(side.ghost_id)).decrypt(event)
            except Undecryptable as e:
                log.warning("Cannot decrypt %s in %s: %s", event["event_id"], side.room_id, e)
                decrypted = None
            if decrypted is not None:
                return decrypted
            key = "refused_undecryptable"
            metrics.undecryptable("chat")
        metrics.refused(key)
        await self.portal.notice(self.portal.ghost(side.ghost_id), side.room_id, key,
                                 cause=event["event_id"])
        return None

    async def decrypt_late_chat_event(self, side: Side, event: dict) -> dict | None:
        """An encrypted event in a room whose chat has ended, read while the ghost's device
        is still there (it goes with the room); None, silently, otherwise."""
        devices = self.portal.ghost_devices
        device = devices.running(side.ghost_id) if devices is not None else None
        if device is None:
            return None
        try:
            return await device.decrypt(event)
        except Undecryptable:
            return None
