"""Pairing requests and offers as typed rows, read once at the boundary.

Every statement that returns a request selects REQUEST_COLUMNS and hands the record to
`PairingRequest.from_row`; from there on, functions take and return typed objects, so
`mypy --strict` checks every field they use (an asyncpg record is `Any` to it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from ..clock import iso
from ..db import RowModel

RequestStatus = Literal["searching", "matched", "expired", "cancelled"]

# Columns of `pairing_requests` that make a `PairingRequest`, in every statement that
# returns one.
REQUEST_COLUMNS = (
    "id, customer_id, duration_minutes, preferred_mitra_id, status, session_id,"
    " rerouted_from, expires_at, created_at, closed_at"
)


@dataclass(frozen=True, slots=True)
class PairingRequest(RowModel):
    """One row of `pairing_requests` (REQUEST_COLUMNS). Times are UTC; `session_id` is
    set once matched, `rerouted_from` when a reroute opened it, `closed_at` once it is
    no longer searching."""

    id: UUID
    customer_id: UUID
    duration_minutes: int
    preferred_mitra_id: UUID | None
    status: RequestStatus
    session_id: UUID | None
    rerouted_from: UUID | None
    expires_at: datetime
    created_at: datetime
    closed_at: datetime | None

    def offer(self) -> Offer:
        """What its offered mitras are told (`pairing.offer`, `GET /api/pairing/offers`)."""
        return Offer(self.id, self.duration_minutes, self.expires_at)


@dataclass(frozen=True, slots=True)
class OfferedRequest:
    """A request with the mitras it was offered to (`pairing_offers`), as its customer
    sees it."""

    request: PairingRequest
    offered_to: tuple[UUID, ...]

    @classmethod
    def of(cls, request: PairingRequest, offered_to: Iterable[UUID | str]) -> OfferedRequest:
        """`offered_to` as ids or their strings, in the order given."""
        return cls(request, tuple(m if isinstance(m, UUID) else UUID(m) for m in offered_to))

    def public(self) -> dict[str, Any]:
        """The `{pairing_request: ...}` payload (SPEC §4): ids and times as strings
        (ISO-8601 UTC)."""
        request = self.request
        return {
            "id": str(request.id),
            "status": request.status,
            "duration_minutes": request.duration_minutes,
            "offered_to": [str(m) for m in self.offered_to],
            "expires_at": iso(request.expires_at),
            "session_id": str(request.session_id) if request.session_id else None,
        }


# Columns (of `pairing_requests`, under OPEN_OFFERS_SQL's alias) that make an `Offer`.
OFFER_COLUMNS = "r.id AS request_id, r.duration_minutes, r.expires_at"


@dataclass(frozen=True, slots=True)
class Offer(RowModel):
    """A request as a mitra it was offered to sees it: until `expires_at` (UTC), the
    first of them to accept it gets a session of `duration_minutes`."""

    request_id: UUID
    duration_minutes: int
    expires_at: datetime

    def public(self) -> dict[str, Any]:
        """The `pairing.offer` event's data and an `{offers: [...]}` item (SPEC §4, §6)."""
        return {
            "request_id": str(self.request_id),
            "duration_minutes": self.duration_minutes,
            "expires_at": iso(self.expires_at),
        }
