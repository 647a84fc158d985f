"""Encryption with several processes (bridge/cluster/): a conversation's rooms are kept in one
partition, so one process handles both and uses both ghosts' devices; to-device messages
that reach a process not holding their device wait here for the one that does.

- inbox.partition: the partition the event is handled in, fixed when it is recorded (the
  room's entry in room_partitions, else the hash of its room ID). NULL: recorded by a single
  process, or before this revision: the hash applies.
- room_partitions: a chat room's partition, chosen when its conversation opens (one the
  opening process owns) and written before anyone is invited into the room.
- conversations.partition: that choice, so a resumed opening uses the same one.
- device_inbox: a to-device message (or a one-time key count) for one of our devices that
  another process holds; the holder takes it, or whoever holds the device next.

Revision ID: 0011_cluster_devices
Revises: 0010_forget_keeps
Create Date: 2026-12-05
"""
from alembic import op

revision = "0011_cluster_devices"
down_revision = "0010_forget_keeps"
branch_labels = None
depends_on = None


def _execute_script(script: str) -> None:
    # asyncpg prepares each statement: one statement per execute.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _execute_script("""
    ALTER TABLE inbox ADD COLUMN partition integer;
    ALTER TABLE conversations ADD COLUMN partition integer;
    CREATE TABLE room_partitions (
        room_id    text PRIMARY KEY,
        partition  integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE device_inbox (
        seq         bigserial PRIMARY KEY,
        user_id     text NOT NULL,
        device_id   text NOT NULL,
        kind        text NOT NULL CHECK (kind IN ('to_device', 'otk_count')),
        payload     jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX device_inbox_device ON device_inbox (user_id, device_id, seq);
    """)


def downgrade() -> None:
    _execute_script("""
    DROP TABLE device_inbox;
    DROP TABLE room_partitions;
    ALTER TABLE conversations DROP COLUMN partition;
    ALTER TABLE inbox DROP COLUMN partition;
    """)
