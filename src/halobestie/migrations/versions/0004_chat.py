"""Chat inside a session (SPEC §5) and session-time warnings (SPEC §7).

`chat_messages` holds each session's messages, numbered by `seq` 1, 2, 3, ... per
session. The counter lives on the session row (`chat_sessions.last_message_seq`): a send
increments it in its own transaction, so the row lock serialises the senders of one
session and `seq` follows commit order with no gap (a rolled-back send rolls its
increment back). The two read cursors sit beside it, so a session payload carries all
three without a join, and CHECKs keep them at or below the last message.

`timers.kind` gains `session_warning`: one row per active session, due at its next
warning (sessions/warnings.py), so UNIQUE (kind, ref_id) holds as it is.

Revision ID: 0004
Revises: 0003
"""

from halobestie.migrations.sql import run_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        -- Constant defaults: no table rewrite (Postgres 11+).
        ALTER TABLE chat_sessions
            ADD COLUMN last_message_seq  integer NOT NULL DEFAULT 0,
            ADD COLUMN customer_read_seq integer NOT NULL DEFAULT 0,
            ADD COLUMN mitra_read_seq    integer NOT NULL DEFAULT 0,
            ADD CONSTRAINT chat_sessions_read_seq_check CHECK (
                last_message_seq >= 0
                AND customer_read_seq BETWEEN 0 AND last_message_seq
                AND mitra_read_seq BETWEEN 0 AND last_message_seq);

        CREATE TABLE chat_messages (
            id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            session_id        uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
            seq               integer NOT NULL CHECK (seq >= 1),
            sender_id         uuid NOT NULL REFERENCES users (id),
            sender_role       text NOT NULL CHECK (sender_role IN ('customer', 'mitra')),
            body              text NOT NULL CHECK (length(body) BETWEEN 1 AND 4000),
            client_message_id text NOT NULL CHECK (length(client_message_id) BETWEEN 1 AND 64),
            created_at        timestamptz NOT NULL,
            -- The history's only index: pages in both directions walk it.
            CONSTRAINT chat_messages_session_seq_key UNIQUE (session_id, seq),
            -- Idempotent sends: a retried client_message_id finds the first one.
            CONSTRAINT chat_messages_client_id_key
                UNIQUE (session_id, sender_id, client_message_id)
        );

        ALTER TABLE timers DROP CONSTRAINT timers_kind_check;
        ALTER TABLE timers ADD CONSTRAINT timers_kind_check CHECK (kind IN (
            'offer_expiry', 'payment_timeout', 'session_expiry', 'session_warning'));
        """
    )


def downgrade() -> None:
    run_sql(
        """
        DELETE FROM timers WHERE kind = 'session_warning';
        ALTER TABLE timers DROP CONSTRAINT timers_kind_check;
        ALTER TABLE timers ADD CONSTRAINT timers_kind_check CHECK (kind IN (
            'offer_expiry', 'payment_timeout', 'session_expiry'));
        DROP TABLE chat_messages;
        ALTER TABLE chat_sessions
            DROP CONSTRAINT chat_sessions_read_seq_check,
            DROP COLUMN last_message_seq,
            DROP COLUMN customer_read_seq,
            DROP COLUMN mitra_read_seq;
        """
    )
