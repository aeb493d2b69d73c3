"""Benchmark data, written straight into Postgres in bulk (generate_series), then mirrored
into Valkey by the engine's own seed.

Shape of a stage with N online mitras: N online and active mitras with a fresh
`last_heartbeat_at`, 5 % of them busy (one active chat session each, so capacity keys
hold both 0 and 1), plus 1 % of N deactivated (offline) mitras. Every mitra has
`HISTORY_PER_MITRA` closed chat sessions of history (ended within the last 30 days, with
past customers of their own), and `mitras.open_sessions` / `last_active_at` counted from
its sessions as the app keeps them (`availability/load.py`). Every mitra and every bench
customer has an auth session, so access tokens can be minted for them directly (nobody
logs in: argon2 would dominate the setup time).
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
HISTORY_PER_MITRA = 20
# The history's customers: their own users (no tokens), so that the bench customers'
# queries do not meet millions of past sessions.
PAST_CUSTOMERS = 1000
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
    have = int(
        await conn.fetchval(
            "SELECT count(*) FROM users WHERE role = 'customer' AND email LIKE 'bench-customer-%'"
        )
    )
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


async def grow_to(conn: Any, online: int, now: datetime, history: int = HISTORY_PER_MITRA) -> int:
    """Add online mitras (and their 1 % deactivated, 5 % busy companions), each with
    `history` closed sessions, until `online` are online. Returns how many online mitras
    were added."""
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
                                status_changed_at, created_at, last_active_at)
            SELECT id, g <= $5, g <= $5, CASE WHEN g <= $5 THEN $4 END, $4, $4,
                   -- the end of its latest past session (HISTORY_SQL), if it has a
                   -- history: an instant of the last 30 days drawn from its email
                   CASE WHEN $6 THEN $4::timestamptz - interval '1 second'
                                     * ((hashtext(email) & 2147483647) % 2592000) END
            FROM (SELECT id, email, row_number() OVER (ORDER BY email) AS g FROM u) numbered
            """,
            first,
            first + add + deactivated - 1,
            NOT_A_PASSWORD_HASH,
            now,
            add,
            history > 0,
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
        new_mitras = (_mitra_email(first), _mitra_email(first + add + deactivated - 1))
        if history:
            await add_history(conn, new_mitras, now, history)
        # Busy: an active session for 5 % of the new online mitras, counted on their
        # rows as the app counts it (`availability/load.py`).
        await conn.execute(
            """
            WITH busy AS (
              INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes,
                                         started_at, ends_at, created_at)
              SELECT $1, m.id, 'active', 240, $2::timestamptz,
                     $2::timestamptz + interval '4 hours', $2::timestamptz
              FROM mitras m JOIN users u ON u.id = m.id
              WHERE m.is_online AND lower(u.email) BETWEEN $4 AND $5
              ORDER BY m.id
              LIMIT $3
              RETURNING mitra_id, created_at)
            UPDATE mitras m SET open_sessions = m.open_sessions + 1,
                   last_active_at = greatest(m.last_active_at, busy.created_at)
            FROM busy WHERE m.id = busy.mitra_id
            """,
            busy_customer,
            now,
            max(1, round(add * BUSY_SHARE)),
            *new_mitras,
        )
    await conn.execute("ANALYZE users, mitras, auth_sessions, chat_sessions")
    await check_load_columns(conn, new_mitras)
    return add


def _mitra_email(serial: int) -> str:
    return f"bench-mitra-{serial:07d}@bench.invalid"


async def ensure_past_customers(conn: Any, now: datetime) -> None:
    """The customers of the history (no auth sessions: nobody uses them). Their ids are
    `past_customer_id(n)`, n = 1 .. PAST_CUSTOMERS, so the history names them without a
    join."""
    await conn.execute(
        """
        INSERT INTO users (id, email, password_hash, display_name, role, created_at)
        SELECT ('c0000000-0000-0000-0000-' || lpad(to_hex(g), 12, '0'))::uuid,
               'bench-past-customer-' || lpad(g::text, 5, '0') || '@bench.invalid', $2,
               'Past customer ' || g, 'customer', $3::timestamptz - interval '60 days'
        FROM generate_series(1, $1::int) g
        ON CONFLICT DO NOTHING
        """,
        PAST_CUSTOMERS,
        NOT_A_PASSWORD_HASH,
        now,
    )


# One statement, generated server-side (no rows cross the wire): HISTORY_PER_MITRA ended
# sessions of 30 minutes per mitra of the email range, 36 hours apart, the latest ending
# at the mitra row's last_active_at (so row and history agree by construction), each
# with one of the past customers (by id: no join). The ids ascend (mitra serial, then k; a prefix
# gen_random_uuid() never produces, its version nibble being 0): appended at the
# primary key's right edge instead of scattered over it, which halves the insert.
HISTORY_SQL = """
INSERT INTO chat_sessions (id, customer_id, mitra_id, status, duration_minutes, created_at,
                           started_at, ends_at, closed_at, updated_at)
SELECT ('b0000000-0000-0000-0000-' || lpad(to_hex(h.serial * 100 + h.k), 12, '0'))::uuid,
       ('c0000000-0000-0000-0000-' || lpad(to_hex(h.customer), 12, '0'))::uuid,
       h.mitra_id, 'ended', 30, h.closed - interval '31 minutes',
       h.closed - interval '30 minutes', h.closed, h.closed, h.closed
FROM (SELECT m.id AS mitra_id, substr(u.email, 13, 7)::bigint AS serial, k,
             1 + abs(hashtext(u.email) + k) % $3 AS customer,
             m.last_active_at - (k - 1) * interval '36 hours' AS closed
      FROM users u JOIN mitras m ON m.id = u.id CROSS JOIN generate_series(1, $4::int) k
      WHERE u.role = 'mitra' AND lower(u.email) BETWEEN $1 AND $2) h
"""

# The load columns' definition (the same as tests/factories.py RECOUNT_SQL): what
# `check_load_columns` compares the rows written above with, on a sample.
RECOUNT_SQL = """
SELECT count(*) FROM (
  SELECT m.open_sessions, m.last_active_at,
         (SELECT count(*) FROM chat_sessions cs WHERE cs.mitra_id = m.id
            AND cs.status IN ('active', 'pending_payment')) AS open_counted,
         (SELECT max(greatest(cs.created_at, cs.closed_at)) FROM chat_sessions cs
            WHERE cs.mitra_id = m.id) AS last_counted
  FROM mitras m WHERE m.id = ANY($1::uuid[])) x
WHERE open_sessions <> open_counted OR last_active_at IS DISTINCT FROM last_counted
"""


async def add_history(conn: Any, emails: tuple[str, str], now: datetime, per_mitra: int) -> None:
    """Inside the caller's transaction: `per_mitra` past sessions for each mitra whose
    email is in the range. Bulk-load practice, as pg_restore does it: the secondary indexes of
    chat_sessions are dropped and rebuilt (same definitions, from pg_indexes) around the
    insert, and, when the role may (superuser), foreign keys are not checked row by row
    (`session_replication_role = replica`): the rows reference users that exist, and the
    checks would be 2 lookups per row, 4M at 100k online."""
    await ensure_past_customers(conn, now)
    superuser = await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    indexes = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i"
        " JOIN pg_index x ON x.indexrelid = format('%I.%I', i.schemaname, i.indexname)::regclass"
        " WHERE i.schemaname = 'public' AND i.tablename = 'chat_sessions'"
        " AND NOT x.indisprimary AND NOT x.indisunique"
    )
    for index in indexes:
        await conn.execute(f'DROP INDEX "{index["indexname"]}"')
    if superuser:
        await conn.execute("SET LOCAL session_replication_role = replica")
    await conn.execute(HISTORY_SQL, emails[0], emails[1], PAST_CUSTOMERS, per_mitra)
    if superuser:
        await conn.execute("SET LOCAL session_replication_role = origin")
    await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
    for index in indexes:
        await conn.execute(index["indexdef"])


async def check_load_columns(conn: Any, emails: tuple[str, str], sample: int = 500) -> None:
    """RuntimeError unless `open_sessions` / `last_active_at` of a random sample of the
    mitras in the range are what the recount of their sessions gives."""
    ids = await conn.fetch(
        "SELECT id FROM users WHERE role = 'mitra' AND lower(email) BETWEEN $1 AND $2"
        " ORDER BY random() LIMIT $3",
        emails[0],
        emails[1],
        sample,
    )
    wrong = await conn.fetchval(RECOUNT_SQL, [r["id"] for r in ids])
    if wrong:
        raise RuntimeError(
            f"bench data: {wrong} of {len(ids)} sampled mitras have load"
            " columns that disagree with their sessions"
        )


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


def write_tokens_file(path: Path, pairs: list[tuple[UUID, str]]) -> Path:
    path.write_text("".join(f"{uid} {token}\n" for uid, token in pairs))
    return path


def stale_time(now: datetime) -> datetime:
    return now - timedelta(hours=2)
