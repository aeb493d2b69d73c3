"""Benchmark data, written straight into Postgres in bulk (generate_series), then mirrored
into Valkey by the engine's own seed.

Shape of a stage with N online mitras: N online and active mitras with a fresh
`last_heartbeat_at`, 5 % of them busy (one active chat session each, so capacity keys
hold both 0 and 1), plus 1 % of N deactivated (offline) mitras. Every mitra and every
bench customer has an auth session, so access tokens can be minted for them directly
(nobody logs in: argon2 would dominate the setup time).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from halobestie.auth.tokens import Principal, issue_access_token

NOT_A_PASSWORD_HASH = "bench-user-cannot-log-in"  # noqa: S105
BUSY_SHARE = 0.05
DEACTIVATED_SHARE = 0.01
TOKEN_TTL = 24 * 3600


async def wipe(conn: Any) -> None:
    tables = await conn.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        " AND tablename <> 'alembic_version'"
    )
    if tables:
        names = ", ".join(f'"{r["tablename"]}"' for r in tables)
        await conn.execute(f"TRUNCATE {names} CASCADE")


async def _next_serial(conn: Any, role: str) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM users WHERE role = $1", role)) + 1


async def ensure_customers(conn: Any, count: int, now: datetime) -> None:
    have = int(await conn.fetchval("SELECT count(*) FROM users WHERE role = 'customer'"))
    if have >= count:
        return
    first = have + 1
    await conn.execute(
        """
        WITH u AS (
          INSERT INTO users (email, password_hash, display_name, role)
          SELECT 'bench-customer-' || g || '@bench.invalid', $3, 'Bench customer ' || g,
                 'customer'
          FROM generate_series($1::int, $2::int) g RETURNING id)
        INSERT INTO auth_sessions (user_id, refresh_token_hash, created_at, expires_at)
        SELECT id, 'bench', $4::timestamptz, $4::timestamptz + interval '30 days' FROM u
        """,
        first,
        count,
        NOT_A_PASSWORD_HASH,
        now,
    )


async def grow_to(conn: Any, online: int, now: datetime) -> int:
    """Add online mitras (and their 1 % deactivated, 5 % busy companions) until `online`
    are online. Returns how many online mitras were added."""
    current = int(await conn.fetchval("SELECT count(*) FROM mitras WHERE is_online"))
    add = online - current
    if add <= 0:
        return 0
    await ensure_customers(conn, 1, now)
    busy_customer = await conn.fetchval(
        "SELECT id FROM users WHERE role = 'customer' ORDER BY email LIMIT 1"
    )
    first = await _next_serial(conn, "mitra")
    deactivated = max(1, round(add * DEACTIVATED_SHARE))
    async with conn.transaction():
        await conn.execute(
            """
            WITH u AS (
              INSERT INTO users (email, password_hash, display_name, role, created_at)
              SELECT 'bench-mitra-' || lpad(g::text, 7, '0') || '@bench.invalid', $3,
                     'Bench mitra ' || g, 'mitra', $4
              FROM generate_series($1::int, $2::int) g RETURNING id, email)
            INSERT INTO mitras (id, is_online, is_active, last_heartbeat_at,
                                status_changed_at, created_at)
            SELECT id, g <= $5, g <= $5, CASE WHEN g <= $5 THEN $4 END, $4, $4
            FROM (SELECT id, row_number() OVER (ORDER BY email) AS g FROM u) numbered
            """,
            first,
            first + add + deactivated - 1,
            NOT_A_PASSWORD_HASH,
            now,
            add,
        )
        await conn.execute(
            """
            INSERT INTO auth_sessions (user_id, refresh_token_hash, created_at, expires_at)
            SELECT m.id, 'bench', $1::timestamptz, $1::timestamptz + interval '30 days'
            FROM mitras m
            WHERE NOT EXISTS (SELECT 1 FROM auth_sessions s WHERE s.user_id = m.id)
            """,
            now,
        )
        # Busy: an active session for 5 % of the new online mitras (none had any yet).
        await conn.execute(
            """
            INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes,
                                       started_at, ends_at, created_at)
            SELECT $1, m.id, 'active', 240, $2::timestamptz,
                   $2::timestamptz + interval '4 hours', $2::timestamptz
            FROM mitras m
            WHERE m.is_online
              AND NOT EXISTS (SELECT 1 FROM chat_sessions cs WHERE cs.mitra_id = m.id)
            ORDER BY m.id
            LIMIT $3
            """,
            busy_customer,
            now,
            max(1, round(add * BUSY_SHARE)),
        )
    await conn.execute("ANALYZE users, mitras, auth_sessions, chat_sessions")
    return add


async def tokens(
    conn: Any, role: str, secret: str, now: datetime, *, limit: int, online_only: bool = True
) -> list[tuple[UUID, str]]:
    """(user id, access token) for the first `limit` users of that role (by email)."""
    extra = " AND m.is_online AND m.is_active" if role == "mitra" and online_only else ""
    join = " JOIN mitras m ON m.id = u.id" if role == "mitra" else ""
    rows = await conn.fetch(
        f"""
        SELECT DISTINCT ON (u.email) u.id, s.id AS sid, u.email
        FROM users u JOIN auth_sessions s ON s.user_id = u.id AND s.revoked_at IS NULL{join}
        WHERE u.role = $1{extra}
        ORDER BY u.email, s.created_at
        LIMIT $2
        """,  # noqa: S608
        role,
        limit,
    )
    return [
        (r["id"], issue_access_token(secret, Principal(r["id"], r["sid"], role), now, TOKEN_TTL))
        for r in rows
    ]


async def age_session_history(conn: Any) -> None:
    """Every mitra equally idle again: closed sessions moved to one old instant. Pairing
    offers go to the longest-idle mitras first; once every mitra has a distinct last
    activity, all concurrent requests of a trial are offered the same five and most
    accepts collide. With ties, the ranking shuffles, as it does for a fresh pool."""
    await conn.execute(
        "UPDATE chat_sessions SET created_at = '2000-01-01', closed_at = '2000-01-01'"
        " WHERE status NOT IN ('active', 'pending_payment')"
    )


def write_tokens_file(path: Path, pairs: list[tuple[UUID, str]]) -> Path:
    path.write_text("".join(f"{uid} {token}\n" for uid, token in pairs))
    return path


def stale_time(now: datetime) -> datetime:
    return now - timedelta(hours=2)
