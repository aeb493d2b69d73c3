"""The chat session as a typed row: what `chat_sessions` holds, read once at the boundary.

Every statement that returns a session selects SESSION_COLUMNS and hands the record to
`ChatSession.from_row`; from there on, functions take and return `ChatSession`, so
`mypy --strict` checks every field they use (an asyncpg record is `Any` to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from ..clock import iso
from ..concepts import SessionStatus
from ..db import RowModel

# Who moved a session: a party, an admin, a timer (`system`) or the payment webhook.
ActorRole = Literal["customer", "mitra", "admin", "system", "payment"]

# Columns of `chat_sessions` that make a `ChatSession`, in every statement that returns one.
SESSION_COLUMNS = (
    "id, customer_id, mitra_id, status, duration_minutes, started_at, ends_at,"
    " created_at, closed_at, pairing_request_id,"
    " last_message_seq, customer_read_seq, mitra_read_seq"
)


@dataclass(frozen=True, slots=True)
class ChatSession(RowModel):
    """One row of `chat_sessions` (SESSION_COLUMNS). Times are UTC; `started_at` and
    `ends_at` are None until paid, `closed_at` while open; the three seqs are 0 before
    the first message or read."""

    id: UUID
    customer_id: UUID
    mitra_id: UUID
    status: SessionStatus
    duration_minutes: int
    started_at: datetime | None
    ends_at: datetime | None
    created_at: datetime
    closed_at: datetime | None
    pairing_request_id: UUID | None
    last_message_seq: int
    customer_read_seq: int
    mitra_read_seq: int

    def public(self, now: datetime) -> dict[str, Any]:
        """The `{session: ...}` payload (SPEC §4, §5, §7): ids and times as strings
        (ISO-8601 UTC), `server_now` = `now`, for a countdown that does not trust the
        device clock."""
        return {
            "id": str(self.id),
            "customer_id": str(self.customer_id),
            "mitra_id": str(self.mitra_id),
            "status": self.status,
            "duration_minutes": self.duration_minutes,
            "started_at": iso(self.started_at) if self.started_at else None,
            "ends_at": iso(self.ends_at) if self.ends_at else None,
            "last_message_seq": self.last_message_seq,
            "customer_read_seq": self.customer_read_seq,
            "mitra_read_seq": self.mitra_read_seq,
            "server_now": iso(now),
        }

    @property
    def parties(self) -> tuple[UUID, UUID]:
        """The customer and the mitra, the two who hear of its changes."""
        return self.customer_id, self.mitra_id


# Columns of `chat_session_events` that make a `StatusChange`.
STATUS_CHANGE_COLUMNS = "id, from_status, to_status, actor_id, actor_role, reason, at"


@dataclass(frozen=True, slots=True)
class StatusChange(RowModel):
    """One row of a session's history (`chat_session_events`): `from_status` is None for
    the first; `active -> active` records an extension."""

    id: int
    from_status: SessionStatus | None
    to_status: SessionStatus
    actor_id: UUID | None
    actor_role: ActorRole
    reason: str
    at: datetime

    def public(self) -> dict[str, Any]:
        """The `{events: [...]}` item (SPEC §4): `from`, `to`, `actor_id`, `actor_role`,
        `reason`, `at` (ISO-8601 UTC)."""
        return {
            "from": self.from_status,
            "to": self.to_status,
            "actor_id": str(self.actor_id) if self.actor_id else None,
            "actor_role": self.actor_role,
            "reason": self.reason,
            "at": iso(self.at),
        }
