"""The pairing blast's ranking kept on the mitra row: open sessions and last activity.

Opening a pairing request used to group every online mitra's whole session history to
rank them. These two columns are written in the transaction of every session change
(`sessions/transitions.py` through `availability.load.record_session_change`), so the
ranking is a read of one row per mitra, and the Postgres fallback an index walk with a
LIMIT (`mitras_offer_rank_idx`).

Revision ID: 0003
Revises: 0002
"""

from halobestie.migrations.sql import run_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_sql(
        """
        -- open_sessions: chat sessions in pending_payment or active (the capacity count);
        -- last_active_at: the most recent start or end of any of its chat sessions.
        ALTER TABLE mitras
            ADD COLUMN open_sessions  integer NOT NULL DEFAULT 0 CHECK (open_sessions >= 0),
            ADD COLUMN last_active_at timestamptz;
        UPDATE mitras m SET open_sessions = s.n
        FROM (SELECT mitra_id, count(*) AS n FROM chat_sessions
              WHERE status IN ('active', 'pending_payment') GROUP BY mitra_id) s
        WHERE m.id = s.mitra_id;
        UPDATE mitras m SET last_active_at = s.at
        FROM (SELECT mitra_id, max(greatest(created_at, closed_at)) AS at FROM chat_sessions
              GROUP BY mitra_id) s
        WHERE m.id = s.mitra_id;
        -- The fallback's order: least loaded, then longest idle (never active first).
        CREATE INDEX mitras_offer_rank_idx ON mitras (open_sessions, last_active_at NULLS FIRST)
            WHERE is_online AND is_active;
        -- A mitra's latest offer, one index probe (the fallback spreads requests with it).
        DROP INDEX pairing_offers_mitra_idx;
        CREATE INDEX pairing_offers_mitra_created_idx ON pairing_offers (mitra_id, created_at);
        """
    )


def downgrade() -> None:
    run_sql(
        """
        DROP INDEX pairing_offers_mitra_created_idx;
        CREATE INDEX pairing_offers_mitra_idx ON pairing_offers (mitra_id);
        DROP INDEX mitras_offer_rank_idx;
        ALTER TABLE mitras DROP COLUMN open_sessions, DROP COLUMN last_active_at;
        """
    )
