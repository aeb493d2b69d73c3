"""Pairing requests and offers, session history, payments, durable timers.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from halobestie.migrations.sql import run_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        CREATE TABLE pairing_requests (
            id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            customer_id        uuid NOT NULL REFERENCES users (id),
            duration_minutes   integer NOT NULL CHECK (duration_minutes BETWEEN 1 AND 240),
            preferred_mitra_id uuid REFERENCES mitras (id),
            status             text NOT NULL CHECK (status IN (
                                   'searching', 'matched', 'expired', 'cancelled')),
            session_id         uuid REFERENCES chat_sessions (id),
            rerouted_from      uuid REFERENCES chat_sessions (id),
            expires_at         timestamptz NOT NULL,
            created_at         timestamptz NOT NULL,
            closed_at          timestamptz
        );
        -- One open search per customer at a time.
        CREATE UNIQUE INDEX pairing_requests_one_searching_idx ON pairing_requests (customer_id)
            WHERE status = 'searching';

        CREATE TABLE pairing_offers (
            request_id uuid NOT NULL REFERENCES pairing_requests (id) ON DELETE CASCADE,
            mitra_id   uuid NOT NULL REFERENCES mitras (id),
            created_at timestamptz NOT NULL,
            PRIMARY KEY (request_id, mitra_id)
        );
        CREATE INDEX pairing_offers_mitra_idx ON pairing_offers (mitra_id);

        ALTER TABLE chat_sessions
            ADD COLUMN pairing_request_id uuid REFERENCES pairing_requests (id),
            ADD COLUMN closed_at timestamptz;
        CREATE INDEX chat_sessions_mitra_closed_idx ON chat_sessions (mitra_id, closed_at);

        -- Every status change of a chat session: from, to, by whom, why, when.
        CREATE TABLE chat_session_events (
            id          bigserial PRIMARY KEY,
            session_id  uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
            from_status text,
            to_status   text NOT NULL,
            actor_id    uuid,
            actor_role  text NOT NULL CHECK (actor_role IN (
                            'customer', 'mitra', 'admin', 'system', 'payment')),
            reason      text NOT NULL,
            at          timestamptz NOT NULL
        );
        CREATE INDEX chat_session_events_session_idx ON chat_session_events (session_id, id);

        -- Payment webhook idempotency: one row per provider reference.
        CREATE TABLE payments (
            reference   text PRIMARY KEY CHECK (length(reference) BETWEEN 1 AND 200),
            session_id  uuid NOT NULL REFERENCES chat_sessions (id),
            received_at timestamptz NOT NULL
        );

        -- Durable timers: due times in Postgres, fired once (FOR UPDATE SKIP LOCKED).
        CREATE TABLE timers (
            id       bigserial PRIMARY KEY,
            kind     text NOT NULL CHECK (kind IN (
                         'offer_expiry', 'payment_timeout', 'session_expiry')),
            ref_id   uuid NOT NULL,
            due_at   timestamptz NOT NULL,
            fired_at timestamptz,
            UNIQUE (kind, ref_id)
        );
        CREATE INDEX timers_pending_idx ON timers (due_at) WHERE fired_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        "ALTER TABLE chat_sessions DROP COLUMN pairing_request_id, DROP COLUMN closed_at;"
    )
    op.execute("DROP TABLE timers, payments, chat_session_events, pairing_offers,"
               " pairing_requests")
