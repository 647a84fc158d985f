"""Core pairing state: users, queue, conversations, the durable inbox, relayed-event map.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    CREATE TABLE users (
        user_id     text PRIMARY KEY,
        -- the user's DM with the bot, where command replies and notices go
        dm_room_id  text,
        -- when they confirmed they are an adult and accept the rules (NULL: not yet)
        agreed_at   timestamptz,
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    CREATE INDEX users_dm_room ON users (dm_room_id);

    -- The waiting queue. seq orders it: the one waiting longest is served first.
    CREATE TABLE waiting (
        user_id     text PRIMARY KEY REFERENCES users ON DELETE CASCADE,
        seq         bigserial UNIQUE,
        enqueued_at timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE conversations (
        id              bigserial PRIMARY KEY,
        -- opening: rooms being made / invites out; active: both joined; ended
        state           text NOT NULL DEFAULT 'opening'
                        CHECK (state IN ('opening', 'active', 'ended')),
        created_at      timestamptz NOT NULL DEFAULT now(),
        invite_deadline timestamptz NOT NULL,
        ended_at        timestamptz,
        end_reason      text,
        -- the user whose action ended it (NULL: the bridge ended it, e.g. an invite timed out)
        ended_by        text
    );
    CREATE INDEX conversations_opening ON conversations (invite_deadline) WHERE state = 'opening';

    -- One row per participant. ghost_id is the anonymous user in THIS user's room who stands
    -- for the partner; room_id is this user's room.
    CREATE TABLE conversation_sides (
        conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
        side            smallint NOT NULL CHECK (side IN (0, 1)),
        user_id         text NOT NULL REFERENCES users,
        ghost_id        text NOT NULL UNIQUE,
        room_id         text UNIQUE,
        joined_at       timestamptz,
        -- false once the conversation ended for this side
        live            boolean NOT NULL DEFAULT true,
        -- the ghost has said goodbye and left this room (cleanup done)
        closed_at       timestamptz,
        PRIMARY KEY (conversation_id, side)
    );
    -- The database itself guarantees no user is ever in two live conversations.
    CREATE UNIQUE INDEX one_live_conversation_per_user ON conversation_sides (user_id) WHERE live;
    CREATE INDEX sides_needing_cleanup ON conversation_sides (conversation_id)
        WHERE NOT live AND closed_at IS NULL;

    -- Every event the homeserver delivered, recorded before the transaction is acknowledged.
    -- event_id is the exactly-once key (transaction IDs are not: Synapse may restart them).
    -- The event body is dropped once handled: no transcript is kept.
    CREATE TABLE inbox (
        seq         bigserial PRIMARY KEY,
        event_id    text NOT NULL UNIQUE,
        room_id     text NOT NULL,
        event       jsonb,
        received_at timestamptz NOT NULL DEFAULT now(),
        handled_at  timestamptz
    );
    CREATE INDEX inbox_pending ON inbox (room_id, seq) WHERE handled_at IS NULL;
    CREATE INDEX inbox_handled ON inbox (handled_at) WHERE handled_at IS NOT NULL;

    -- A relayed event: the user's event in their room -> the ghost's copy in the partner's room.
    -- Replies and edits are mapped through it in both directions.
    CREATE TABLE relayed (
        source_event_id text PRIMARY KEY,
        conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
        target_room_id  text NOT NULL,
        target_event_id text NOT NULL
    );
    CREATE INDEX relayed_target ON relayed (target_event_id);
    CREATE INDEX relayed_conversation ON relayed (conversation_id);
    """)


def downgrade() -> None:
    op.execute("DROP TABLE relayed, inbox, conversation_sides, conversations, waiting, users")
