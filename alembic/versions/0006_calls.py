"""Call IDs mapped per conversation: what one side's client calls its party (its device ID)
and its call, and the random stand-in the other side sees instead.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE call_ids (
        conversation_id bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        kind            text NOT NULL CHECK (kind IN ('call', 'party')),
        -- the side whose client chose real_id; the other side only ever sees alias
        side            smallint NOT NULL CHECK (side IN (0, 1)),
        real_id         text NOT NULL,
        alias           text NOT NULL,
        PRIMARY KEY (conversation_id, kind, side, real_id),
        UNIQUE (conversation_id, kind, side, alias)
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE call_ids")
