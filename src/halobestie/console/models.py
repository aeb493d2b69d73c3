"""Response models of the console's admin API (typed, and documented in /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MitraState = Literal["available", "busy", "stale", "offline", "deactivated"]
MitraFilter = Literal["all", "online", "available", "busy", "stale", "offline", "deactivated"]


class MitraCounts(BaseModel):
    """The pool. `online` counts the online set; of those, `available` (fresh heartbeat,
    below capacity), `busy` (fresh, at capacity) and `stale` (heartbeat older than
    HEARTBEAT_STALE_SECONDS, not yet swept offline). `source` is where they were read."""

    online: int
    available: int
    busy: int
    stale: int
    deactivated: int
    source: Literal["valkey", "postgres"]


class SessionCounts(BaseModel):
    """Open sessions now, and sessions closed within the last `window_seconds` (counted
    from the newest `RECENT_ROWS` status changes: `truncated` when the window held more)."""

    pending_payment: int
    active: int
    ended: int
    expired: int
    cancelled: int
    rerouted: int
    window_seconds: int
    truncated: bool


class Beacon(BaseModel):
    """What customers see (GET /api/availability)."""

    state: Literal["available", "busy", "offline"]
    available_count: int
    computed_at: str


class Health(BaseModel):
    """This instance's view of its servers."""

    postgres: Literal["ok", "unavailable", "busy"]
    valkey: Literal["ok", "degraded", "disabled"]
    valkey_reachable: bool = Field(description="the breaker is closed")
    mirror_trusted: bool = Field(description="seeded against the current Valkey server")
    fallback: bool = Field(description="availability reads are served from Postgres now")
    events_subscribed: bool = Field(description="receiving other instances' events")
    instance_id: str


class Overview(BaseModel):
    """Everything the console's header shows; also the `admin.counts` event's data."""

    sampled_at: str
    mitras: MitraCounts
    sessions: SessionCounts | None = Field(description="null while Postgres is unavailable")
    beacon: Beacon | None = Field(description="null while neither server answers")
    health: Health
    last_event_id: int | None = Field(
        description="the newest session status change; null while Postgres is unavailable"
    )


class Sample(BaseModel):
    """One point of the counts chart."""

    at: str
    online: int
    available: int
    busy: int
    deactivated: int
    pending_payment: int | None
    active: int | None


class OverviewWithHistory(Overview):
    history: list[Sample] = Field(
        description="this instance's samples, oldest first, while an admin was watching"
    )


class OpenSession(BaseModel):
    id: str
    customer_id: str
    status: Literal["pending_payment", "active"]
    deadline: str = Field(description="ends_at when active; the payment deadline when pending")
    seconds_left: float = Field(description="until the deadline, as of server_now; <= 0: due")


class MitraRow(BaseModel):
    id: str
    email: str
    display_name: str
    state: MitraState
    is_online: bool
    is_active: bool
    open_sessions: int
    capacity: int = Field(description="MITRA_MAX_CONCURRENT_SESSIONS")
    last_heartbeat_at: str | None
    heartbeat_age_seconds: float | None
    sessions: list[OpenSession]


class MitraPage(BaseModel):
    """One page, in id order. Pass `next_after` as `after` for the next page; null at the
    end. A filter on a heartbeat-derived state (available, busy, stale) looks at
    SCAN_LIMIT mitras at most per page, so a page may be short before the end."""

    mitras: list[MitraRow]
    next_after: str | None
    filter: MitraFilter
    server_now: str
    heartbeats_from: Literal["valkey", "postgres"]


class SessionEvent(BaseModel):
    id: int
    at: str
    session_id: str
    from_status: str | None
    to_status: str
    actor_role: str
    reason: str
    mitra_id: str
    mitra_name: str
    customer_id: str


class SessionEvents(BaseModel):
    """Newest first."""

    events: list[SessionEvent]
