"""The asker's watch room: made by "Stranger 1" (ghost_1) with "Stranger 2" (ghost_2) in it,
the asker invited as to a chat room (encrypted as their chat rooms would be). Nothing the
asker writes there goes anywhere. Opening and closing can be repeated after a crash."""
from __future__ import annotations

import asyncio
import logging

import asyncpg
from mautrix.api import Method, Path
from mautrix.errors import MatrixConnectionError, MatrixRequestError
from mautrix.client import ClientAPI
from mautrix.types import (EncryptionAlgorithm, EventType, Membership,
                           RoomEncryptionStateEventContent)

from bridge.config import Config
from bridge.portal import DEFAULT_EVENT_POWER, Portal
from bridge.questions import table
from bridge.questions.table import Question

log = logging.getLogger("bridge.questions.watch")


class Watch:
    def __init__(self, pool: asyncpg.Pool, config: Config, portal: Portal) -> None:
        self.pool = pool
        self.config = config
        self.portal = portal
        # One opening or closing of a question's room at a time (the match, the discussers'
        # greeting and the question timer may all ask for it).
        self._locks: dict[int, asyncio.Lock] = {}

    def name(self, number: int) -> str:
        """What the watch room calls a discusser: "Stranger 1", "Stranger 2"."""
        return f"{self.config['bridge.ghost_displayname']} {number}"

    def _lock(self, question_id: int) -> asyncio.Lock:
        return self._locks.setdefault(question_id, asyncio.Lock())

    async def open(self, question_id: int) -> bool:
        """Make the watch room (once) and invite the asker; False when the asker could not
        be invited at all (the caller ends the question)."""
        async with self._lock(question_id):
            q = await table.get(self.pool, question_id)
            if q is None or q.state != "matched" or q.watch_room_id is not None:
                return True
            return await self._open(q)

    async def _open(self, q: Question) -> bool:
        ghost_1, ghost_2 = self.portal.ghost(q.ghost_1), self.portal.ghost(q.ghost_2)
        fresh = await self.portal.register_ghost(ghost_1)
        await self.portal.register_ghost(ghost_2)
        room_id, invited = None, False
        if not fresh:
            # An earlier attempt made the room without recording it (createRoom has no
            # transaction ID): ghost_1 only ever joins this room.
            joined = await ghost_1.get_joined_rooms()
            room_id = joined[0] if joined else None
        encrypted = await self.portal.should_encrypt(q.asker)
        if room_id is None:
            await asyncio.gather(ghost_1.set_displayname(self.name(1), check_current=False),
                                 ghost_2.set_displayname(self.name(2), check_current=False))
            initial_state = [{"type": "m.room.history_visibility", "state_key": "",
                              "content": {"history_visibility": "invited"}},
                             {"type": "m.room.guest_access", "state_key": "",
                              "content": {"guest_access": "forbidden"}}]
            if encrypted:
                # Both ghosts' devices exist before the asker's client looks for them.
                await asyncio.gather(self.portal.ghost_devices.get(q.ghost_1),
                                     self.portal.ghost_devices.get(q.ghost_2))
                initial_state.append({"type": "m.room.encryption", "state_key": "",
                                      "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
            try:
                created = await ghost_1.api.request(Method.POST, Path.v3.createRoom, {
                    "preset": "private_chat", "invite": [q.asker],
                    "initial_state": initial_state,
                    # (Stranger 2 needs no power: messages, reactions and taking back its
                    # own events are open to every member.)
                    "power_level_content_override": {"events": DEFAULT_EVENT_POWER},
                }, retry_count=0)
                room_id, invited = created["room_id"], True
                await self.portal.appservice.state_store.set_membership(
                    room_id, q.asker, Membership.INVITE)
            except (MatrixRequestError, MatrixConnectionError, asyncio.TimeoutError) as e:
                joined = await ghost_1.get_joined_rooms()
                if not joined:
                    raise
                log.warning("Question %d: watch room made, but not its invite: %s", q.id, e)
                room_id = joined[0]
            self.portal.appservice.state_store.encryption[room_id] = (
                RoomEncryptionStateEventContent(algorithm=EncryptionAlgorithm.MEGOLM_V1)
                if encrypted else None)
        await table.set_watch_room(self.pool, q.id, room_id)
        log.info("Question %d: watch room %s", q.id, room_id)
        try:
            await ghost_1.invite_user(room_id, q.ghost_2)
        except MatrixRequestError as e:
            log.info("Question %d: Stranger 2's invite: %s", q.id, e)  # in already (a retry)
        await ghost_2.join_room_by_id(room_id)
        if not invited:
            try:
                await ghost_1.invite_user(room_id, q.asker)
            except MatrixRequestError as e:
                if e.http_status >= 500 or e.http_status == 429:
                    raise
                if fresh:
                    log.warning("Question %d: the asker could not be invited: %s", q.id, e)
                    return False
                log.info("Question %d: asker's invite (again): %s", q.id, e)
        return True

    async def asker_membership(self, q: Question) -> str | None:
        """The asker's membership of the watch room, as the homeserver has it now."""
        try:
            # (The plain client call: the intent's would answer from its cache.)
            member = await ClientAPI.get_state_event(self.portal.ghost(q.ghost_1),
                                                     q.watch_room_id, EventType.ROOM_MEMBER,
                                                     q.asker)
        except MatrixRequestError as e:
            if e.http_status >= 500 or e.http_status == 429:
                raise
            return None
        membership = getattr(member, "membership", None)
        return membership.value if isinstance(membership, Membership) else membership

    async def welcome(self, q: Question) -> None:
        """The watch room's first notice, once the asker is in: a remote asker's homeserver
        gets the room's events only from their join on (as for chat rooms' greeting)."""
        await self.portal.notice(self.portal.ghost(q.ghost_1), q.watch_room_id, "watch_opened",
                                 cause=q.id, question=q.question, name_1=self.name(1),
                                 name_2=self.name(2))

    async def close(self, question_id: int, notice: tuple[str, int, dict] | None) -> list[str]:
        """The watch is over: `notice` (key, number of the ghost who says it, values) in the
        room, the invite taken back if never accepted, both ghosts out and their devices
        deleted. Returns the ghosts (for the caller to drop caches)."""
        async with self._lock(question_id):
            q = await table.get(self.pool, question_id)
            if q is None or q.state != "ended" or q.closed_at is not None or q.ghost_1 is None:
                return []
            if q.watch_room_id is not None:
                await self._say_goodbye(q, notice)
                for ghost_id in (q.ghost_2, q.ghost_1):
                    try:
                        await self.portal.ghost(ghost_id).leave_room(q.watch_room_id)
                    except MatrixRequestError as e:
                        if e.http_status >= 500 or e.http_status == 429:
                            raise
                        log.info("Question %d: a ghost leaving the watch room: %s", q.id, e)
            if self.portal.ghost_devices is not None:
                for ghost_id in (q.ghost_1, q.ghost_2):
                    await self.portal.ghost_devices.forget(ghost_id)
            await table.mark_closed(self.pool, q.id)
        self._locks.pop(question_id, None)
        return [q.ghost_1, q.ghost_2]

    async def _say_goodbye(self, q: Question, notice: tuple[str, int, dict] | None) -> None:
        ghost_1 = self.portal.ghost(q.ghost_1)
        try:
            if notice is not None:
                key, number, values = notice
                ghost = self.portal.ghost(q.ghost_of(number - 1))
                await self.portal.notice(ghost, q.watch_room_id, key, cause=f"end {q.id}",
                                         **values)
            if q.joined_at is None:
                # Take back an invite nobody accepted, so it doesn't linger in their client.
                await ghost_1.kick_user(q.watch_room_id, q.asker, reason="The watch ended")
        except MatrixRequestError as e:
            # The asker may have left already: no one to tell.
            if e.http_status >= 500 or e.http_status == 429:
                raise
            log.info("Question %d: closing the watch room: %s", q.id, e)
