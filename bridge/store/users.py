"""users: who has talked to the bot, their DM room, and whether they agreed to the rules."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg


@dataclass(frozen=True)
class User:
    user_id: str
    dm_room_id: str | None
    agreed_at: datetime | None

    @property
    def agreed(self) -> bool:
        return self.agreed_at is not None


def _user(row: asyncpg.Record | None) -> User | None:
    return User(row["user_id"], row["dm_room_id"], row["agreed_at"]) if row else None


async def get(db, user_id: str) -> User | None:
    return _user(await db.fetchrow(
        "SELECT user_id, dm_room_id, agreed_at FROM users WHERE user_id = $1", user_id))


async def get_by_dm_room(db, room_id: str, user_id: str) -> User | None:
    """The user whose DM with the bot room_id is (None when it is not theirs)."""
    return _user(await db.fetchrow(
        """SELECT user_id, dm_room_id, agreed_at FROM users
           WHERE dm_room_id = $1 AND user_id = $2""", room_id, user_id))


async def is_dm_room(db, room_id: str) -> bool:
    return await db.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE dm_room_id = $1)", room_id)


async def ensure(db, user_id: str) -> User:
    row = await db.fetchrow(
        """INSERT INTO users (user_id) VALUES ($1)
           ON CONFLICT (user_id) DO UPDATE SET user_id = EXCLUDED.user_id
           RETURNING user_id, dm_room_id, agreed_at""", user_id)
    return _user(row)


async def set_dm_room(db, user_id: str, room_id: str) -> None:
    """Make room_id the user's DM with the bot (a newer DM replaces an older one)."""
    await db.execute(
        """INSERT INTO users (user_id, dm_room_id) VALUES ($1, $2)
           ON CONFLICT (user_id) DO UPDATE SET dm_room_id = EXCLUDED.dm_room_id""",
        user_id, room_id)


async def clear_dm_room(db, room_id: str) -> None:
    await db.execute("UPDATE users SET dm_room_id = NULL WHERE dm_room_id = $1", room_id)


async def agree(db, user_id: str) -> bool:
    """Record agreement; False when they had already agreed."""
    status = await db.execute(
        "UPDATE users SET agreed_at = now() WHERE user_id = $1 AND agreed_at IS NULL", user_id)
    return status.endswith(" 1")



async def owner_of_dm_room(db, room_id: str) -> str | None:
    return await db.fetchval("SELECT user_id FROM users WHERE dm_room_id = $1 LIMIT 1", room_id)


async def preferences(db, user_id: str) -> tuple[tuple[str, ...], str | None]:
    """(interest tags, language) the user chose; ((), None) when none."""
    row = await db.fetchrow("SELECT tags, lang FROM users WHERE user_id = $1", user_id)
    return (tuple(row["tags"]), row["lang"]) if row else ((), None)


async def set_tags(db, user_id: str, tags: tuple[str, ...]) -> None:
    """Tags must already be normalised (bridge.matching.parse_tags)."""
    await db.execute("UPDATE users SET tags = $2 WHERE user_id = $1", user_id, list(tags))


async def set_lang(db, user_id: str, lang: str | None) -> None:
    await db.execute("UPDATE users SET lang = $2 WHERE user_id = $1", user_id, lang)


async def lang_by_room(db, room_id: str) -> str | None:
    """The language (`!lang`) of the user whose DM with the bot, or whose chat room, this is;
    None when they chose none or the room is no user's."""
    return await db.fetchval(
        """SELECT lang FROM users WHERE dm_room_id = $1
           UNION ALL
           SELECT u.lang FROM conversation_sides s JOIN users u ON u.user_id = s.user_id
           WHERE s.room_id = $1
           LIMIT 1""", room_id)
