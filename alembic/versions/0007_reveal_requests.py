"""Mutual reveal: each side's request to exchange contacts in a conversation, and whether
(and to whom) the exchange was delivered.

Revision ID: 0007_reveal_requests
Revises: 0006
Create Date: 2026-12-04
"""
from alembic import op

revision = "0007_reveal_requests"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE reveal_requests (
        conversation_id   bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        side              smallint NOT NULL CHECK (side IN (0, 1)),
        -- the how-many-th request of this side (one taken back and made again is new: the
        -- partner's notice of it is a new message, with a transaction ID of its own)
        round             integer NOT NULL DEFAULT 1,
        requested_at      timestamptz NOT NULL DEFAULT now(),
        -- taken back with !reveal cancel before the partner agreed
        cancelled_at      timestamptz,
        -- the partner was told of this request, and of its withdrawal
        asked_told_at     timestamptz,
        withdrawn_told_at timestamptz,
        -- both agreed: set on both sides' rows by the one transaction that decided it
        revealed_at       timestamptz,
        -- this side was told the partner's Matrix ID (exactly once: see bridge/reveal)
        delivered_at      timestamptz,
        PRIMARY KEY (conversation_id, side)
    )""")
    # What start-up (or a retry) still has to say.
    op.execute("""
    CREATE INDEX reveal_requests_due ON reveal_requests (conversation_id)
        WHERE (revealed_at IS NOT NULL AND delivered_at IS NULL)
           OR (revealed_at IS NULL AND cancelled_at IS NULL AND asked_told_at IS NULL)
           OR (cancelled_at IS NOT NULL AND asked_told_at IS NOT NULL
               AND withdrawn_told_at IS NULL)""")


def downgrade() -> None:
    op.execute("DROP TABLE reveal_requests")
