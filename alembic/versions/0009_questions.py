"""Question mode: questions asked (!ask), the discussers' queue (!discuss), who accepts
questions from the chat queue (!questions on), what was mirrored into the asker's watch room,
and reports of a question (reported_side 2: the asker).

Revision ID: 0009_questions
Revises: 0008_forget_asked
Create Date: 2026-12-04
"""
from alembic import op

revision = "0009_questions"
down_revision = "0008_forget_asked"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    -- !questions on: while waiting after !start, the user may be taken to discuss a question.
    ALTER TABLE users ADD COLUMN accept_questions boolean NOT NULL DEFAULT false;

    -- !discuss: users waiting for a question to discuss (never paired for a plain chat).
    CREATE TABLE discussers (
        user_id text PRIMARY KEY REFERENCES users ON DELETE CASCADE,
        seq     bigserial NOT NULL,
        since   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX discussers_seq ON discussers (seq);

    -- A question and its three-party state: waiting for two discussers; matched (their
    -- conversation is conversation_id, the asker's watch room shows them as ghost_1 and
    -- ghost_2); ended (the watch is over; the discussers' chat may go on).
    CREATE TABLE questions (
        id              bigserial PRIMARY KEY,
        asker           text NOT NULL REFERENCES users ON DELETE CASCADE,
        question        text NOT NULL,
        state           text NOT NULL DEFAULT 'waiting'
                        CHECK (state IN ('waiting', 'matched', 'ended')),
        asked_at        timestamptz NOT NULL DEFAULT now(),
        conversation_id bigint UNIQUE REFERENCES conversations ON DELETE SET NULL,
        ghost_1         text,
        ghost_2         text,
        -- per side of the conversation: came through !discuss (a !next queues them again
        -- as discussers, not for a plain chat)
        discuss_only    boolean[] NOT NULL DEFAULT '{false,false}',
        watch_room_id   text,
        joined_at       timestamptz,
        read_only_told  boolean NOT NULL DEFAULT false,
        end_reason      text,
        ended_by        text,
        ended_at        timestamptz,
        closed_at       timestamptz
    );
    -- One open question per asker.
    CREATE UNIQUE INDEX questions_open_per_asker ON questions (asker) WHERE state <> 'ended';
    CREATE INDEX questions_waiting ON questions (id) WHERE state = 'waiting';
    CREATE INDEX questions_watch_room ON questions (watch_room_id);

    -- A discusser's relayed event -> its copy in the watch room (replies, edits, reactions
    -- and redactions are mapped through it; a repeat is never mirrored twice).
    CREATE TABLE question_mirrored (
        source_event_id text PRIMARY KEY,
        question_id     bigint NOT NULL REFERENCES questions ON DELETE CASCADE,
        watch_event_id  text NOT NULL
    );
    CREATE INDEX question_mirrored_question ON question_mirrored (question_id);

    -- A discusser may report the question: the reported one is the asker (side 2).
    ALTER TABLE reports DROP CONSTRAINT reports_reported_side_check;
    ALTER TABLE reports ADD CONSTRAINT reports_reported_side_check
        CHECK (reported_side IN (0, 1, 2));
    """)


def downgrade() -> None:
    _execute_script("""
    DELETE FROM reports WHERE reported_side = 2;
    ALTER TABLE reports DROP CONSTRAINT reports_reported_side_check;
    ALTER TABLE reports ADD CONSTRAINT reports_reported_side_check
        CHECK (reported_side IN (0, 1));
    DROP TABLE question_mirrored;
    DROP TABLE questions;
    DROP TABLE discussers;
    ALTER TABLE users DROP COLUMN accept_questions;
    """)
