"""!forget asks for a confirmation: when the user asked, so `!forget confirm` counts only
within bridge.privacy.forget_window (in PostgreSQL, so any bridge process handles the
confirmation).

Revision ID: 0008_forget_asked
Revises: 0007_reveal_requests
Create Date: 2026-12-04
"""
from alembic import op

revision = "0008_forget_asked"
down_revision = "0007_reveal_requests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN forget_asked_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN forget_asked_at")
