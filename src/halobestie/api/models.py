"""The response bodies of the HTTP API (SPEC §4's wrapped shapes), for /openapi.json.

Features return plain payloads (dicts built from their rows, or frozen dataclasses);
routes wrap them here with `Model.model_validate(...)`, so that what the document
promises is what is sent: a route answering a shape that does not fit its model fails
in the tests (tests/api/test_fuzz.py checks every answer against the document).
Timestamps are ISO-8601 UTC strings, ids UUID strings, as the features render them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ..concepts import SessionStatus

Role = Literal["customer", "mitra", "admin"]


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer (SPEC §4)."""

    error: str = Field(description="a stable machine-readable code, e.g. invalid_request")
    detail: Any = Field(description="for a person: what is wrong and where")


class User(BaseModel):
    id: str
    email: str
    display_name: str
    role: Role


class LoginOut(BaseModel):
    user: User
    access_token: str = Field(description="send as `Authorization: Bearer <access_token>`")
    refresh_token: str = Field(description="single use: POST /api/auth/refresh")
    token_type: Literal["bearer"]
    expires_in: int = Field(description="seconds until the access token expires")


class NewMitra(BaseModel):
    id: str
    email: str
    display_name: str
    is_online: bool
    is_active: bool


class NewMitraOut(BaseModel):
    mitra: NewMitra


class Mitra(NewMitra):
    last_heartbeat_at: str | None
    active_sessions: int = Field(description="open sessions: pending_payment or active")


class MitraOut(BaseModel):
    mitra: Mitra


class MitrasOut(BaseModel):
    mitras: list[Mitra]


class OnlineOut(BaseModel):
    is_online: bool


class MitraStatus(BaseModel):
    is_online: bool
    is_active: bool
    last_heartbeat_at: str | None
    active_sessions: int


class HeartbeatOut(BaseModel):
    is_online: Literal[True]
    at: str = Field(description="when this heartbeat was recorded (ISO-8601 UTC)")
    next_heartbeat_in_seconds: float


class AvailabilityBeacon(BaseModel):
    state: Literal["available", "busy", "offline"]
    available_count: int
    computed_at: str


class Reachability(BaseModel):
    reachable: bool
    available: bool


class OpenSessionCounts(BaseModel):
    pending_payment: int
    active: int


class Dashboard(BaseModel):
    online_count: int
    available_count: int
    deactivated_count: int
    sessions: OpenSessionCounts
    source: str = Field(description="valkey, or postgres while the mirror is not trusted")


class ReseedOut(BaseModel):
    online: int
    deactivated: int
    capacities: int
    heartbeats: int
    ranked: int


class MissingExtra(BaseModel):
    missing: list[str]
    extra: list[str]


class Differences(BaseModel):
    online: MissingExtra
    deactivated: MissingExtra
    capacity: dict[str, dict[str, int]] = Field(description="mitra id -> {valkey, postgres}")
    heartbeat: dict[str, dict[str, str | None]] = Field(
        description="mitra id -> {valkey, postgres}"
    )
    ranked: dict[str, Any] = Field(description="{missing, extra, score} of the ranked index")


class DriftOut(BaseModel):
    in_sync: bool
    differences: Differences


class PairingRequest(BaseModel):
    id: str
    status: Literal["searching", "matched", "expired", "cancelled"]
    duration_minutes: int
    offered_to: list[str] = Field(description="mitra ids this request was offered to")
    expires_at: str
    session_id: str | None


class PairingRequestOut(BaseModel):
    pairing_request: PairingRequest


class Offer(BaseModel):
    request_id: str
    duration_minutes: int
    expires_at: str


class OffersOut(BaseModel):
    offers: list[Offer]


class Session(BaseModel):
    id: str
    customer_id: str
    mitra_id: str
    status: SessionStatus
    duration_minutes: int
    started_at: str | None = Field(description="set when paid")
    ends_at: str | None
    last_message_seq: int
    customer_read_seq: int
    mitra_read_seq: int
    server_now: str = Field(description="the server's clock, for a countdown")


class SessionOut(BaseModel):
    session: Session


class StatusChange(BaseModel):
    from_: SessionStatus | None = Field(alias="from", description="None for the first")
    to: SessionStatus
    actor_id: str | None
    actor_role: Literal["customer", "mitra", "admin", "system", "payment"]
    reason: str
    at: str


class SessionEventsOut(BaseModel):
    events: list[StatusChange]


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    postgres: str = Field(
        description="ok; else why not: unavailable, or a busy pool's overloaded /"
        " statement_timeout / lock_timeout / conflict_retry"
    )
    valkey: Literal["ok", "degraded"]


class Event(BaseModel):
    """One recorded event (SPEC §6): what the socket sent as `{type, seq, data}`."""

    seq: int = Field(description="the user's event number: 1, 2, 3, ... with no gap")
    type: str = Field(description="pairing.offer, session.updated, message.created, ...")
    data: dict[str, Any]
    created_at: str


class EventsOut(BaseModel):
    events: list[Event]
    last_seq: int = Field(description="the user's last event number (0 before the first)")
