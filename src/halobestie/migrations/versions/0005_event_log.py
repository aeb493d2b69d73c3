"""The event log (SPEC §6): every event a user is sent, numbered per user.

`event_cursors` holds each user's last event number; a transaction that announces a
change bumps its recipients' counters and inserts their events as its last statement
(events/log.py). The counter row stays locked until that transaction ends, so a user's
events are numbered in commit order with no gap (a rollback gives its numbers back).
Counters are never deleted: numbering goes on after the events themselves expire.

`events` keeps each event for EVENT_RETENTION_SECONDS; replays read it by its primary
key (user_id, seq), the retention sweep by `created_at` (its own index).

Revision ID: 0005
Revises: 0004
"""

from halobestie.migrations.sql import run_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        CREATE TABLE event_cursors (
            user_id  uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
            last_seq bigint NOT NULL CHECK (last_seq >= 0)
        );

        CREATE TABLE events (
            user_id    uuid NOT NULL,
            seq        bigint NOT NULL CHECK (seq >= 1),
            type       text NOT NULL,
            data       jsonb NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (user_id, seq)
        );
        CREATE INDEX events_created_at_idx ON events (created_at);
        """
    )


def downgrade() -> None:
    run_sql(
        """
        DROP TABLE events;
        DROP TABLE event_cursors;
        """
    )
