"""Reads of pairing requests and offers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from ..clock import iso
from ..context import Context
from ..errors import NotFound

REQUEST_COLUMNS = (
    "id, customer_id, duration_minutes, preferred_mitra_id, status, session_id,"
    " rerouted_from, expires_at, created_at, closed_at"
)


def public_pairing_request(row: Any, offered_to: Sequence[UUID | str]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "duration_minutes": row["duration_minutes"],
        "offered_to": [str(m) for m in offered_to],
        "expires_at": iso(row["expires_at"]),
        "session_id": str(row["session_id"]) if row["session_id"] else None,
    }


async def lock_customer_search(conn: Any, customer_id: UUID) -> None:
    """Lock the customer's searching request, if any. A reroute takes it before its
    session transition locks the mitra's row: the accept of that request takes the
    request, then the mitra (`accept.py`), and one order for both means no deadlock."""
    await conn.execute(
        "SELECT id FROM pairing_requests WHERE customer_id = $1 AND status = 'searching'"
        " FOR UPDATE",
        customer_id,
    )


async def offered_mitras(conn: Any, request_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT mitra_id FROM pairing_offers WHERE request_id = $1 ORDER BY mitra_id",
        request_id,
    )
    return [r["mitra_id"] for r in rows]


async def lock_request(conn: Any, request_id: UUID) -> Any:
    """The request row, locked for the rest of the transaction; NotFound if absent."""
    row = await conn.fetchrow(
        f"SELECT {REQUEST_COLUMNS} FROM pairing_requests WHERE id = $1 FOR UPDATE",  # noqa: S608
        request_id,
    )
    if row is None:
        raise NotFound(f"no pairing request with id {request_id}")
    return row


async def get_customer_request(ctx: Context, request_id: UUID, customer_id: UUID) -> dict[str, Any]:
    """A customer sees only their own requests: anyone else's is NotFound (no leak)."""
    async with ctx.db.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT {REQUEST_COLUMNS} FROM pairing_requests"  # noqa: S608
            " WHERE id = $1 AND customer_id = $2",
            request_id,
            customer_id,
        )
        if row is None:
            raise NotFound(f"no pairing request with id {request_id}")
        return public_pairing_request(row, await offered_mitras(conn, request_id))


# A mitra's latest offer: one backward probe of pairing_offers_mitra_created_idx per id.
LAST_OFFERED_SQL = """
SELECT id::text, (SELECT max(o.created_at) FROM pairing_offers o WHERE o.mitra_id = id)
FROM unnest($1::uuid[]) AS id
"""


async def last_offered(conn: Any, mitra_ids: Sequence[str]) -> dict[str, datetime | None]:
    """When each of these mitras was last offered a request (None: never)."""
    rows = await conn.fetch(LAST_OFFERED_SQL, list(mitra_ids))
    return {r[0]: r[1] for r in rows}


OPEN_OFFERS_SQL = """
SELECT r.id, r.duration_minutes, r.expires_at
FROM pairing_offers o
JOIN pairing_requests r ON r.id = o.request_id
WHERE o.mitra_id = $1 AND r.status = 'searching' AND r.expires_at > $2
ORDER BY r.expires_at, r.id
"""


def public_offer(row: Any) -> dict[str, Any]:
    return {
        "request_id": str(row["id"]),
        "duration_minutes": row["duration_minutes"],
        "expires_at": iso(row["expires_at"]),
    }


async def open_offers(ctx: Context, mitra_id: UUID, now: datetime) -> list[dict[str, Any]]:
    """Offers this mitra can still accept: searching and not past their expiry."""
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(OPEN_OFFERS_SQL, mitra_id, now)
    return [public_offer(r) for r in rows]
