"""Whether a user may use the bridge now: every source of restriction, combined (moderators'
sanctions and server bans, the policy lists followed, the config's server lists). A new
source is one more entry in the list."""
from __future__ import annotations

from datetime import datetime

from bridge.config import Config
from bridge.moderation import sanctions, server_bans
from bridge.moderation.policy_lists import policy_restriction
from bridge.moderation.restriction import Restriction, strictest
from bridge.moderation.rules import server_of
from bridge.moderation.servers import ServerLists, server_restriction


async def restriction_of(db, config: Config, user_id: str, now: datetime) -> Restriction | None:
    """The restriction to state to the user (the strictest), or None when they are free."""
    return strictest([
        await sanctions.restriction(db, user_id, now),
        await server_bans.restriction(db, server_of(user_id)),
        await policy_restriction(db, config, user_id),
        server_restriction(ServerLists.from_config(config), user_id),
    ], now)
