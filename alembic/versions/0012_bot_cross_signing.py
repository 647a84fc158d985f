"""The bot's cross-signing keys are kept (each bridge process has a bot device of its own,
and every one of them is signed with the same self-signing key): their private seeds,
encrypted with bridge.encryption.pickle_key (bridge/encryption/cross_signing.py).

Revision ID: 0012_bot_cross_signing
Revises: 0011_cluster_devices
Create Date: 2026-12-12
"""
from alembic import op

revision = "0012_bot_cross_signing"
# (Re-chained after 0011_cluster_devices when both branches are merged.)
down_revision = "0011_cluster_devices"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # One row per user whose cross-signing keys the bridge made (the bot). `seeds`: the
    # master, self-signing and user-signing seeds, sealed with the pickle key (pickle_key.seal),
    # re-sealed by --rotate-pickle-key like the Olm pickles.
    op.execute("""
    CREATE TABLE bot_cross_signing (
        user_id    text PRIMARY KEY,
        seeds      text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    )""")


def downgrade() -> None:
    op.execute("DROP TABLE bot_cross_signing")
