"""Reads of pairing requests and offers."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg

from ..context import Context
from ..errors import NotFound
from .models import OFFER_COLUMNS, REQUEST_COLUMNS, Offer, OfferedRequest, PairingRequest


async def lock_customer_search(conn: asyncpg.Connection, customer_id: UUID) -> None:
    """Lock the customer's searching request, if any. A reroute takes it before its
    session transition locks the mitra's row: the accept of that request takes the
    request, then the mitra (`accept.py`), and one order for both means no deadlock."""
    await conn.execute(
        "SELECT id FROM pairing_requests WHERE customer_id = $1 AND status = 'searching'"
        " FOR UPDATE",
        customer_id,
    )


async def offered_mitras(conn: asyncpg.Connection, request_id: UUID) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT mitra_id FROM pairing_offers WHERE request_id = $1 ORDER BY mitra_id",
        request_id,
    )
    return [r["mitra_id"] for r in rows]


async def lock_request(conn: asyncpg.Connection, request_id: UUID) -> PairingRequest:
    """The request, locked for the rest of the transaction; NotFound if absent."""
    row = await conn.fetchrow(
        f"SELECT {REQUEST_COLUMNS} FROM pairing_requests WHERE id = $1 FOR UPDATE",  # noqa: S608
        request_id,
    )
    if row is None:
        raise NotFound(f"no pairing request with id {request_id}")
    return PairingRequest.from_row(row)


async def get_customer_request(ctx: Context, request_id: UUID, customer_id: UUID) -> OfferedRequest:
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
        request = PairingRequest.from_row(row)
        return OfferedRequest.of(request, await offered_mitras(conn, request_id))


# A mitra's latest offer: one backward probe of pairing_offers_mitra_created_idx per id.
LAST_OFFERED_SQL = """
SELECT id::text, (SELECT max(o.created_at) FROM pairing_offers o WHERE o.mitra_id = id)
FROM unnest($1::uuid[]) AS id
"""


async def last_offered(
    conn: asyncpg.Connection, mitra_ids: Sequence[str]
) -> dict[str, datetime | None]:
    """When each of these mitras was last offered a request (None: never)."""
    rows = await conn.fetch(LAST_OFFERED_SQL, list(mitra_ids))
    return {r[0]: r[1] for r in rows}


OPEN_OFFERS_SQL = f"""
SELECT {OFFER_COLUMNS}
FROM pairing_offers o
JOIN pairing_requests r ON r.id = o.request_id
WHERE o.mitra_id = $1 AND r.status = 'searching' AND r.expires_at > $2
ORDER BY r.expires_at, r.id
"""  # noqa: S608


async def open_offers(ctx: Context, mitra_id: UUID, now: datetime) -> list[Offer]:
    """Offers this mitra can still accept: searching and not past their expiry."""
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(OPEN_OFFERS_SQL, mitra_id, now)
    return [Offer.from_row(r) for r in rows]
