"""Matching by interests and language, rematch cooldowns, and the claim's indexes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    -- What the user asked for with !interests / !start <tags> and !lang: kept across chats
    -- and restarts. Tags are stored normalised (bridge.matching.normalise_tag).
    ALTER TABLE users
        ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
        ADD COLUMN lang text;

    -- A waiter carries a snapshot of their preferences. Until fallback_at they are only
    -- paired with someone who satisfies them; from then on (flexible) with anyone who will
    -- have them. flexible is the state the claim reads; the match timer sets it when
    -- fallback_at passes (a user without preferences is flexible at once).
    -- next_check: when the match timer must look for a partner for this waiter again (their
    -- fallback time, a cooldown that expired, or a safety net should the process that
    -- queued them die before looking); NULL when nothing can change for them by itself.
    ALTER TABLE waiting
        ADD COLUMN tags text[] NOT NULL DEFAULT '{}',
        ADD COLUMN lang text,
        ADD COLUMN fallback_at timestamptz NOT NULL DEFAULT now(),
        ADD COLUMN flexible boolean NOT NULL DEFAULT true,
        ADD COLUMN next_check timestamptz DEFAULT now();
    CREATE INDEX waiting_flexible ON waiting (seq) WHERE flexible;
    CREATE INDEX waiting_flexible_lang ON waiting (lang, seq) WHERE flexible;
    CREATE INDEX waiting_next_check ON waiting (next_check) WHERE next_check IS NOT NULL;

    -- One row per waiter and tag ('' for a waiter without tags), so the claim finds "the
    -- longest-waiting user with this tag and this language" with one btree probe, whatever
    -- the queue's size or the tag's popularity (see bridge.matching.probes).
    CREATE TABLE waiting_keys (
        user_id  text NOT NULL REFERENCES waiting ON DELETE CASCADE,
        tag      text NOT NULL,
        lang     text NOT NULL,  -- '' for no language preference
        seq      bigint NOT NULL,
        flexible boolean NOT NULL,
        PRIMARY KEY (user_id, tag)
    );
    CREATE INDEX waiting_keys_exact ON waiting_keys (lang, tag, seq);
    CREATE INDEX waiting_keys_flexible_tag ON waiting_keys (tag, seq) WHERE flexible;
    INSERT INTO waiting_keys (user_id, tag, lang, seq, flexible)
        SELECT user_id, '', '', seq, true FROM waiting;

    -- Pairs who must not be matched again before `until`: written when a conversation ends
    -- (bridge.matching.rematch_cooldown), deleted by the match timer once expired.
    -- user_a < user_b, so a pair has one row. An 'infinity' row never expires.
    CREATE TABLE recent_pairs (
        user_a text NOT NULL REFERENCES users ON DELETE CASCADE,
        user_b text NOT NULL REFERENCES users ON DELETE CASCADE,
        until  timestamptz NOT NULL,
        PRIMARY KEY (user_a, user_b),
        CHECK (user_a < user_b)
    );
    CREATE INDEX recent_pairs_until ON recent_pairs (until);

    -- What the room's opening notice says: the tags both share, and for each side whether
    -- the match had to fall back on their interests or language.
    ALTER TABLE conversations ADD COLUMN shared_tags text[] NOT NULL DEFAULT '{}';
    ALTER TABLE conversation_sides
        ADD COLUMN interests_unmet boolean NOT NULL DEFAULT false,
        ADD COLUMN language_unmet boolean NOT NULL DEFAULT false;
    """)


def downgrade() -> None:
    _execute_script("""
    ALTER TABLE conversation_sides DROP COLUMN interests_unmet, DROP COLUMN language_unmet;
    ALTER TABLE conversations DROP COLUMN shared_tags;
    DROP TABLE recent_pairs;
    DROP TABLE waiting_keys;
    DROP INDEX waiting_flexible;
    DROP INDEX waiting_flexible_lang;
    DROP INDEX waiting_next_check;
    ALTER TABLE waiting DROP COLUMN tags, DROP COLUMN lang, DROP COLUMN fallback_at,
        DROP COLUMN flexible, DROP COLUMN next_check;
    ALTER TABLE users DROP COLUMN tags, DROP COLUMN lang;
    """)
