"""mautrix's in-memory state store, trimmed per room.

It is only a cache of what the homeserver knows (memberships, power levels); the bridge's
own truth is in PostgreSQL. With a fresh ghost and two fresh rooms per conversation, a
cache that is never trimmed would grow forever, so rooms and ghosts are forgotten when a
conversation is cleaned up.
"""
from __future__ import annotations

import logging

from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore


class TrimmedStateStore(ASStateStore, MemoryStateStore):
    def __init__(self) -> None:
        ASStateStore.__init__(self)
        MemoryStateStore.__init__(self)

    def forget_room(self, room_id: str) -> None:
        for cache in (self.members, self.full_member_list, self.power_levels, self.encryption,
                      self.create):
            cache.pop(room_id, None)
        for key in [k for k in self._read if k[0] == room_id]:
            del self._read[key]

    def forget_user(self, user_id: str) -> None:
        self._registered.pop(user_id, None)
        self._presence.pop(user_id, None)


def forget_user_logger(base: logging.Logger, user_id: str) -> None:
    """mautrix makes a logger per appservice user (``<base>.api.<user ID>``), and Python
    keeps every logger for ever: with a new ghost per conversation they would pile up
    (plus a placeholder per dot in the server name). Drop the ghost's."""
    prefix = f"{base.name}.api."
    name = prefix + user_id
    loggers = logging.Logger.manager.loggerDict
    with logging._lock:  # the logging module's own lock for loggerDict
        for key in [k for k in loggers if k.startswith(prefix) and
                    (k == name or name.startswith(k + "."))]:
            del loggers[key]
