"""Safety and moderation: the evidence buffer, reports, sanctions, banned servers, the
moderators' action log, and where the moderation room is.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    -- The only copy of what was said: each side's last few relayed messages (sanitised), kept
    -- so that a report has evidence. Bounded per side (bridge.moderation.evidence_messages);
    -- deleted once the conversation has ended plus bridge.moderation.evidence_grace, unless
    -- an open report holds it.
    CREATE TABLE evidence (
        id              bigserial PRIMARY KEY,
        conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
        side            smallint NOT NULL CHECK (side IN (0, 1)),
        body            text NOT NULL,
        sent_at         timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX evidence_side ON evidence (conversation_id, side, id);

    -- !report: one per reporter and conversation. The reported side's evidence is held while
    -- the report is open.
    CREATE TABLE reports (
        id              bigserial PRIMARY KEY,
        conversation_id bigint NOT NULL REFERENCES conversations ON DELETE CASCADE,
        reporter        text NOT NULL,
        reported        text NOT NULL,
        reported_side   smallint NOT NULL CHECK (reported_side IN (0, 1)),
        reason          text NOT NULL DEFAULT '',
        created_at      timestamptz NOT NULL DEFAULT now(),
        status          text NOT NULL DEFAULT 'open'
                        CHECK (status IN ('open', 'dismissed', 'actioned')),
        resolved_by     text,
        resolved_at     timestamptz,
        UNIQUE (conversation_id, reporter)
    );
    CREATE INDEX reports_open ON reports (id) WHERE status = 'open';
    CREATE INDEX reports_reported ON reports (reported, created_at);
    CREATE INDEX reports_reporter ON reports (reporter, created_at);

    -- Suspensions (timed) and bans (timed or for ever) of one user, by a moderator or
    -- automatically. No foreign key: a moderator may ban someone who never wrote to the bot.
    CREATE TABLE sanctions (
        id          bigserial PRIMARY KEY,
        user_id     text NOT NULL,
        kind        text NOT NULL CHECK (kind IN ('suspended', 'banned')),
        reason      text NOT NULL,
        until       timestamptz,  -- NULL: for ever
        source      text NOT NULL CHECK (source IN ('moderator', 'automatic')),
        created_by  text,         -- the moderator; NULL when automatic
        created_at  timestamptz NOT NULL DEFAULT now(),
        lifted_by   text,
        lifted_at   timestamptz
    );
    CREATE INDEX sanctions_in_force ON sanctions (user_id) WHERE lifted_at IS NULL;

    -- Whole homeservers whose users may not use the bridge.
    CREATE TABLE server_bans (
        server      text PRIMARY KEY,
        reason      text NOT NULL,
        created_by  text NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    -- Every moderator action (and every automatic suspension): who, when, what, why.
    CREATE TABLE moderation_log (
        id          bigserial PRIMARY KEY,
        actor       text NOT NULL,  -- a moderator's Matrix ID, or 'automatic'
        action      text NOT NULL,
        target      text NOT NULL,
        reason      text NOT NULL DEFAULT '',
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    -- Small facts the bridge keeps about itself (the moderation room it made).
    CREATE TABLE bridge_state (
        key   text PRIMARY KEY,
        value text NOT NULL
    );
    """)


def downgrade() -> None:
    _execute_script("""
    DROP TABLE bridge_state;
    DROP TABLE moderation_log;
    DROP TABLE server_bans;
    DROP TABLE sanctions;
    DROP TABLE reports;
    DROP TABLE evidence;
    """)
