"""!forget keeps what protects others: a block records who made it (blocks others made
against a forgotten user stay, keyed by their Matrix ID, so recent_pairs no longer points at
users), and chats (and questions) that ended within the report grace period keep the
forgotten user's real ID until it is over (forget_pending says which, and the stand-in they
get then).

Revision ID: 0010_forget_keeps
Revises: 0009_questions
Create Date: 2026-12-05
"""
from alembic import op

revision = "0010_forget_keeps"
down_revision = "0009_questions"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    -- A block outlives the blocked user's !forget (it protects the one who made it), so a
    -- pair may name someone the users table no longer holds. Deleting a user's pairs is
    -- erase.py's work now.
    ALTER TABLE recent_pairs DROP CONSTRAINT IF EXISTS recent_pairs_user_a_fkey;
    ALTER TABLE recent_pairs DROP CONSTRAINT IF EXISTS recent_pairs_user_b_fkey;
    -- Who blocked (one or both of the pair); NULL on a plain cooldown, and on a block made
    -- before this revision (its maker unknown: !forget of either keeps it, to be safe).
    ALTER TABLE recent_pairs ADD COLUMN blocked_by text[];

    -- A forgotten user's chats and questions that a report may still name (ended within
    -- bridge.moderation.evidence_grace): their real ID stays until then, and the periodic
    -- purge gives them the stand-in (erase.scrub_due), once, deleting this row.
    CREATE TABLE forget_pending (
        id               bigserial PRIMARY KEY,
        user_id          text NOT NULL,
        stand_in         text NOT NULL,
        conversation_ids bigint[] NOT NULL DEFAULT '{}',
        question_ids     bigint[] NOT NULL DEFAULT '{}',
        created_at       timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX forget_pending_user ON forget_pending (user_id);
    """)


def downgrade() -> None:
    _execute_script("""
    DROP TABLE forget_pending;
    ALTER TABLE recent_pairs DROP COLUMN blocked_by;
    DELETE FROM recent_pairs r WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = r.user_a)
                                  OR NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = r.user_b);
    ALTER TABLE recent_pairs ADD CONSTRAINT recent_pairs_user_a_fkey
        FOREIGN KEY (user_a) REFERENCES users ON DELETE CASCADE;
    ALTER TABLE recent_pairs ADD CONSTRAINT recent_pairs_user_b_fkey
        FOREIGN KEY (user_b) REFERENCES users ON DELETE CASCADE;
    """)
