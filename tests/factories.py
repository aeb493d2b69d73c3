"""Test data through the same actions the API uses (users, logins, sessions)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from halobestie.auth.actions import do_open_session
from halobestie.auth.passwords import hash_password
from halobestie.auth.queries import User
from halobestie.availability.load import record_session_change
from halobestie.availability.sync import sync_mitras
from halobestie.context import Context

PASSWORD = "correct horse battery"
_hash_cache: dict[str, str] = {}


@dataclass
class Person:
    user: User
    token: str
    refresh_token: str

    @property
    def id(self) -> UUID:
        return self.user.id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def _password_hash() -> str:
    # argon2 costs ~50 ms a hash; tests create many users with one password.
    if PASSWORD not in _hash_cache:
        _hash_cache[PASSWORD] = await hash_password(PASSWORD)
    return _hash_cache[PASSWORD]


_counter = 0


async def make_user(ctx: Context, role: str, *, email: str | None = None) -> Person:
    global _counter
    _counter += 1
    email = email or f"{role}{_counter}@example.com"
    async with ctx.db.transaction() as conn:
        row = await conn.fetchrow(
            "INSERT INTO users (email, password_hash, display_name, role)"
            " VALUES ($1, $2, $3, $4) RETURNING id, email, display_name, role",
            email,
            await _password_hash(),
            f"{role.title()} {_counter}",
            role,
        )
        if role == "mitra":
            await conn.execute("INSERT INTO mitras (id) VALUES ($1)", row["id"])
    user = User(**dict(row))
    login = await do_open_session(ctx, user, ctx.clock.now())
    return Person(user, login.access_token, login.refresh_token)


async def make_chat_session(
    ctx: Context,
    customer: Person,
    mitra: Person,
    status: str = "active",
    *,
    minutes: int = 30,
    now: datetime | None = None,
) -> Any:
    """A chat_sessions row written straight into Postgres, with the mitra's load
    columns kept as every session change keeps them (the mirror is the caller's: call
    `recompute_capacity`)."""
    at = now or ctx.clock.now()
    async with ctx.db.transaction() as conn:
        session_id = await conn.fetchval(
            "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes,"
            " started_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            customer.id,
            mitra.id,
            status,
            minutes,
            at,
        )
        await record_session_change(conn, mitra.id, at)
        return session_id


# What `mitras.open_sessions` and `last_active_at` mean, recomputed from the whole history
# (as migration 0003 backfills them): for tests that write history rows by hand.
RECOUNT_SQL = """
UPDATE mitras m SET
    open_sessions = (SELECT count(*) FROM chat_sessions cs
                     WHERE cs.mitra_id = m.id AND cs.status IN ('active', 'pending_payment')),
    last_active_at = (SELECT max(greatest(cs.created_at, cs.closed_at)) FROM chat_sessions cs
                      WHERE cs.mitra_id = m.id)
WHERE m.id = ANY($1::uuid[])
"""


async def recount_history(ctx: Context, mitras: list[Person]) -> None:
    """After hand-written history rows: the load columns from history, then the mirror."""
    ids = [m.id for m in mitras]
    async with ctx.db.connection() as conn:
        await conn.execute(RECOUNT_SQL, ids)
    await sync_mitras(ctx, ids)
