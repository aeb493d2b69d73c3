"""Initial schema: users, mitras, auth sessions, chat sessions.

Revision ID: 0001
Revises:
"""

from alembic import op

from halobestie.migrations.sql import run_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        CREATE TABLE users (
            id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email         text NOT NULL CHECK (length(email) <= 254),
            password_hash text NOT NULL,
            display_name  text NOT NULL CHECK (length(display_name) BETWEEN 1 AND 80),
            role          text NOT NULL CHECK (role IN ('customer', 'mitra', 'admin')),
            created_at    timestamptz NOT NULL DEFAULT now()
        );
        -- Emails are unique case-insensitively: Ana@x and ana@x are one person.
        CREATE UNIQUE INDEX users_email_key ON users (lower(email));

        -- A mitra's id is its user id (one id per person).
        CREATE TABLE mitras (
            id                uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
            is_online         boolean NOT NULL DEFAULT false,
            is_active         boolean NOT NULL DEFAULT true,
            last_heartbeat_at timestamptz,
            status_changed_at timestamptz NOT NULL DEFAULT now(),
            created_at        timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX mitras_online_idx ON mitras (id) WHERE is_online;
        CREATE INDEX mitras_deactivated_idx ON mitras (id) WHERE NOT is_active;

        CREATE TABLE auth_sessions (
            id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            refresh_token_hash text NOT NULL,
            created_at         timestamptz NOT NULL DEFAULT now(),
            refreshed_at       timestamptz,
            expires_at         timestamptz NOT NULL,
            revoked_at         timestamptz,
            revoked_reason     text
        );
        CREATE INDEX auth_sessions_user_idx ON auth_sessions (user_id) WHERE revoked_at IS NULL;

        CREATE TABLE chat_sessions (
            id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            customer_id      uuid NOT NULL REFERENCES users (id),
            mitra_id         uuid NOT NULL REFERENCES mitras (id),
            status           text NOT NULL CHECK (status IN (
                                 'pending_payment', 'active', 'ended',
                                 'expired', 'cancelled', 'rerouted')),
            duration_minutes integer NOT NULL CHECK (duration_minutes > 0),
            created_at       timestamptz NOT NULL DEFAULT now(),
            started_at       timestamptz,
            ends_at          timestamptz,
            updated_at       timestamptz NOT NULL DEFAULT now()
        );
        -- Capacity is COUNT(*) of these rows per mitra: keep that count an index scan.
        CREATE INDEX chat_sessions_open_by_mitra_idx ON chat_sessions (mitra_id)
            WHERE status IN ('active', 'pending_payment');
        CREATE INDEX chat_sessions_customer_idx ON chat_sessions (customer_id);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE chat_sessions, auth_sessions, mitras, users")
