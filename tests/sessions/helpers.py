"""Chat-session test helpers: a pending session made by the same action pairing's accept
uses, a signed webhook, and the invariants every step is checked against."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.events.announce import record_effects
from halobestie.sessions.actions import create_pending_session
from halobestie.sessions.transitions import session_changed
from tests.conftest import TEST_WEBHOOK_SECRET, Instance
from tests.factories import Person, make_user


@dataclass
class Cast:
    customer: Person
    mitra: Person
    other_customer: Person
    other_mitra: Person
    admin: Person


async def make_cast(inst: Instance) -> Cast:
    ctx = inst.ctx
    return Cast(
        customer=await make_user(ctx, "customer"),
        mitra=await make_user(ctx, "mitra"),
        other_customer=await make_user(ctx, "customer"),
        other_mitra=await make_user(ctx, "mitra"),
        admin=await make_user(ctx, "admin"),
    )


async def make_pending_session(
    inst: Instance, customer: Person, mitra: Person, *, minutes: int = 30
) -> UUID:
    """A matched pairing request and its `pending_payment` session, history row and
    payment timeout, as `POST /api/pairing/requests/{id}/accept` leaves them."""
    ctx, now = inst.ctx, inst.clock.now()
    async with ctx.db.transaction() as conn:
        request_id = await conn.fetchval(
            "INSERT INTO pairing_requests (customer_id, duration_minutes, status, expires_at,"
            " created_at) VALUES ($1, $2, 'searching', $3, $3) RETURNING id",
            customer.id,
            minutes,
            now,
        )
        row = await create_pending_session(
            ctx,
            conn,
            customer_id=customer.id,
            mitra_id=mitra.id,
            duration_minutes=minutes,
            pairing_request_id=request_id,
            actor_id=mitra.id,
            now=now,
        )
        await conn.execute(
            "UPDATE pairing_requests SET status = 'matched', session_id = $2, closed_at = $3"
            " WHERE id = $1",
            request_id,
            row.id,
            now,
        )
        changed = session_changed(ctx, [row])
        await record_effects(conn, now, [changed])
    await changed()
    return row.id


def sign(raw: bytes, secret: str = TEST_WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def webhook_body(session_id: UUID | str, reference: str = "ref-1", **extra: Any) -> bytes:
    body = {"session_id": str(session_id), "reference": reference, "status": "paid", **extra}
    return json.dumps(body).encode()


async def post_webhook(
    inst: Instance, raw: bytes, signature: str | bytes | None = "sign"
) -> httpx.Response:
    """POST raw bytes; `signature="sign"` signs them correctly, None sends no header."""
    headers: dict[bytes, bytes] = {b"content-type": b"application/json"}
    if signature is not None:
        value = sign(raw) if signature == "sign" else signature
        headers[b"x-signature"] = value.encode() if isinstance(value, str) else value
    return await inst.client.post("/api/payments/webhook", content=raw, headers=headers)


async def pay(inst: Instance, session_id: UUID, reference: str = "ref-1") -> dict[str, Any]:
    r = await post_webhook(inst, webhook_body(session_id, reference))
    assert r.status_code == 200, r.text
    session: dict[str, Any] = r.json()["session"]
    return session


def url(session_id: UUID | str, action: str = "") -> str:
    return f"/api/sessions/{session_id}" + (f"/{action}" if action else "")


async def session_status(pg: asyncpg.Connection, session_id: UUID) -> str:
    status: str = await pg.fetchval("SELECT status FROM chat_sessions WHERE id = $1", session_id)
    return status


async def assert_capacity_mirrored(
    pg: asyncpg.Connection, valkey: Any, mitra: Person, *, absent_is_zero: bool = False
) -> int:
    """`mitra:capacity:<id>` holds exactly COUNT(*) of open sessions in Postgres ("0"
    included: a transition writes the key). After a reseed an absent key reads as 0."""
    count: int = await pg.fetchval(
        "SELECT count(*) FROM chat_sessions"
        " WHERE mitra_id = $1 AND status IN ('active', 'pending_payment')",
        mitra.id,
    )
    mirrored = await valkey.get(f"mitra:capacity:{mitra.id}")
    if absent_is_zero and mirrored is None:
        mirrored = "0"
    assert mirrored == str(count), (mirrored, count)
    return count


async def history(pg: asyncpg.Connection, session_id: UUID) -> list[tuple[Any, ...]]:
    """(from, to, actor_id, actor_role, reason) of each status history row, in order."""
    rows = await pg.fetch(
        "SELECT from_status, to_status, actor_id, actor_role, reason FROM chat_session_events"
        " WHERE session_id = $1 ORDER BY id",
        session_id,
    )
    return [tuple(r) for r in rows]


async def timers(pg: asyncpg.Connection, session_id: UUID) -> dict[str, Any]:
    """kind -> due_at of the session's timers not fired yet."""
    rows = await pg.fetch(
        "SELECT kind, due_at FROM timers WHERE ref_id = $1 AND fired_at IS NULL", session_id
    )
    return {r["kind"]: r["due_at"] for r in rows}


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
