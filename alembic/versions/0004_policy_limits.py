"""Policy lists followed (their rooms and current ban rules), and the limits on starting a chat
that must survive a restart (the !start/!next churn cooldown, the cooldown after a flood).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    -- The moderation policy rooms the bot follows (bridge.policy_rooms, aliases resolved).
    CREATE TABLE policy_rooms (
        room_id    text PRIMARY KEY,
        configured text NOT NULL  -- as written in the config: a room ID or an alias
    );

    -- Each policy room's current ban rules: one per state entry (type, state key), replaced
    -- by a newer state event there, gone when it is emptied or redacted. entity is a glob.
    CREATE TABLE policy_rules (
        room_id    text NOT NULL REFERENCES policy_rooms ON DELETE CASCADE,
        event_type text NOT NULL,
        state_key  text NOT NULL,
        kind       text NOT NULL CHECK (kind IN ('user', 'server')),
        entity     text NOT NULL,
        is_glob    boolean NOT NULL,
        reason     text NOT NULL,
        event_id   text NOT NULL,
        PRIMARY KEY (room_id, event_type, state_key)
    );
    -- Exact entities are looked up by value; only the globs are matched one by one.
    CREATE INDEX policy_rules_exact ON policy_rules (kind, lower(entity)) WHERE NOT is_glob;
    CREATE INDEX policy_rules_globs ON policy_rules (kind) WHERE is_glob;
    CREATE INDEX policy_rules_event ON policy_rules (event_id);

    -- When a user may next !start: the churn cooldown's escalation state, and the cooldown
    -- after a chat ended for flooding.
    CREATE TABLE start_limits (
        user_id       text PRIMARY KEY REFERENCES users ON DELETE CASCADE,
        window_start  timestamptz,
        starts        integer NOT NULL DEFAULT 0,
        level         integer NOT NULL DEFAULT 0,
        blocked_until timestamptz,
        flood_until   timestamptz
    );
    """)


def downgrade() -> None:
    op.execute("DROP TABLE start_limits, policy_rules, policy_rooms")
