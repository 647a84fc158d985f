"""When each side was told its partner had gone: a leave stamped before then (give or take
the clocks) was made to rematch, not to tidy up (bridge.pairing.left_to_rematch).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE conversation_sides ADD COLUMN goodbye_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE conversation_sides DROP COLUMN goodbye_at")
