"""A notice the bot or a ghost sends in a room, in the language of the user that room is for
(their DM with the bot, or their chat room): their `!lang` when there is a catalog for it,
otherwise the operator's bridge.default_language (also for any other room, such as the
moderators')."""
from __future__ import annotations

from mautrix.types import Format, MessageType, TextMessageEventContent

from bridge.i18n import messages
from bridge.i18n import catalogs
from bridge.i18n.direction import notice_fields
from bridge.i18n.language import choose, is_rtl, native_name
from bridge.store import users


def languages_spoken() -> messages.Listing:
    """Each shipped language by its own name, as a language picker shows it."""
    return messages.Listing(tuple(native_name(code) for code in catalogs.shipped()))


async def language_of_room(db, room_id: str, default: str) -> str:
    return choose(await users.lang_by_room(db, room_id), default, catalogs.shipped())


def notice_content(language: str, key: str, **values: messages.Value) -> TextMessageEventContent:
    fields = notice_fields(messages.text(key, language, **values), is_rtl(language))
    content = TextMessageEventContent(msgtype=MessageType.NOTICE, body=fields["body"])
    if "formatted_body" in fields:
        content.format, content.formatted_body = Format.HTML, fields["formatted_body"]
    return content
