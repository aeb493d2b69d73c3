"""Idempotent extensions: one row per `Idempotency-Key` an extension of a session was
bought with (sessions/extend.py).

The primary key (session_id, key) is what makes a retried extension extend once: the
extending transaction inserts its row under the session's lock, so a retry (sequential
or racing) finds the first one's row and answers without extending again. A key is
scoped to its session: the same key on another session is another extension. `minutes`
is kept to tell a retry from a different request reusing the key; the rows go with
their session.

Revision ID: 0006
Revises: 0005
"""

from halobestie.migrations.sql import run_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        CREATE TABLE session_extensions (
            session_id uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
            key        text NOT NULL CHECK (length(key) BETWEEN 1 AND 200),
            minutes    integer NOT NULL CHECK (minutes >= 1),
            ends_at    timestamptz NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (session_id, key)
        );
        """
    )


def downgrade() -> None:
    run_sql("DROP TABLE session_extensions;")
