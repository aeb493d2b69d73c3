"""What must hold after faults under load, each with its bound (docs/subsystems/failures.md):

* answers: no 5xx but retryable 503s (a code of RETRYABLE, with Retry-After); no refusal
  a user could not expect (EXPECTED_REFUSALS); no request left unanswered by an instance
  that was neither frozen nor down meanwhile (a live instance answers within
  DATABASE_TIMEOUT_SECONDS, so within the client's 8 s);
* nothing stuck: sampled from Postgres' own clock while the load runs, no unfired timer
  more than STUCK_BOUND past its due time, no session `pending_payment` more than
  PAYMENT_TIMEOUT_SECONDS + STUCK_BOUND after its creation, no request `searching` more
  than STUCK_BOUND past its expiry;
* nothing lost: every write answered 200/201 is in Postgres;
* the mirror equal to Postgres (the drift endpoint `in_sync`, the ranked index included)
  within MIRROR_BOUND of the end of the last fault.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from websockets.asyncio.client import connect

from tests.chaos.cluster import PAYMENT_TIMEOUT_SECONDS, Cluster, now
from tests.chaos.load import Acked, Call, Load, User

RETRYABLE = frozenset(
    {"database_unavailable", "overloaded", "lock_timeout", "statement_timeout", "conflict_retry"}
)
# 4xx a user meets in a race it cannot see (another mitra was faster, the timer won, its
# own earlier request went through but its answer was lost); anything else is a bug.
EXPECTED_REFUSALS: dict[str, frozenset[str]] = {
    "accept": frozenset({"already_taken", "request_closed", "at_capacity"}),
    "open": frozenset({"no_mitra_available", "invalid_state"}),
    "pay": frozenset({"invalid_state"}),
    "cancel": frozenset({"invalid_state"}),
    # Auto-offline after HEARTBEAT_STALE_SECONDS of silence; counted apart, see below.
    "heartbeat": frozenset({"not_online"}),
}
# The stall cut-off (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS 2 s, the reaper's 2.5 s
# mid-statement), the runner's look after a locked row (0.1 s) and its idle check, plus
# scheduling slack on a loaded 2-core machine.
STUCK_BOUND = 6.0
MIRROR_BOUND = 10.0  # seconds from the end of the last fault to the drift endpoint in_sync
# Seconds from the end of the last fault until an event crosses instances again (the
# subscriber's reconnect backoff is capped at 2 s; a silent link is declared dead in 3 s).
EVENTS_BOUND = 10.0


def bad_answers(cluster: Cluster, calls: list[Call]) -> list[str]:
    bad: list[str] = []
    for c in calls:
        where = f"{c.op} on {c.instance} at {c.start:.1f} ({c.detail})"
        if c.error is not None:
            if not cluster.faulted(c.instance, c.start, c.end):
                bad.append(f"{where}: no answer ({c.error}) from a live instance")
        elif c.status is not None and c.status >= 500:
            if c.status != 503 or c.code not in RETRYABLE or not c.retry_after:
                bad.append(f"{where}: {c.status} {c.code} retry-after={c.retry_after}")
        elif c.status is not None and c.status >= 400:
            if c.code not in EXPECTED_REFUSALS.get(c.op, frozenset()):
                bad.append(f"{where}: {c.status} {c.code}")
    return bad


def refusals(calls: list[Call], code: str) -> list[str]:
    """When, where and why each answer with this error code came (monotonic seconds)."""
    return [f"{c.op} on {c.instance} at {c.start:.1f}: {c.detail}" for c in calls if c.code == code]


def summary(calls: list[Call]) -> str:
    """op: status counts, for the log of a run (pytest -s, or a failure's message)."""
    by_op: dict[str, Counter[str]] = {}
    for c in calls:
        outcome = c.error or (f"{c.status} {c.code}" if c.code else str(c.status))
        by_op.setdefault(c.op, Counter())[outcome] += 1
    return "; ".join(f"{op}: {dict(counts)}" for op, counts in sorted(by_op.items()))


# -- nothing stuck -------------------------------------------------------------------------

OVERDUE_SQL = """
SELECT
  (SELECT extract(epoch FROM now() - min(due_at)) FROM timers
   WHERE fired_at IS NULL)::float8 AS timer,
  (SELECT extract(epoch FROM now() - min(created_at)) FROM chat_sessions
   WHERE status = 'pending_payment')::float8 - $1 AS pending_payment,
  (SELECT extract(epoch FROM now() - min(expires_at)) FROM pairing_requests
   WHERE status = 'searching')::float8 AS searching
"""


@dataclass
class Overdue:
    """The worst lateness seen per kind (seconds past its deadline), and samples taken."""

    worst: dict[str, float] = field(
        default_factory=lambda: {"timer": 0.0, "pending_payment": 0.0, "searching": 0.0}
    )
    samples: int = 0


@asynccontextmanager
async def watching_overdue(database_url: str, every: float = 0.25) -> AsyncIterator[Overdue]:
    """Samples OVERDUE_SQL on a connection of its own until the block ends (and once
    more then), by Postgres' clock."""
    seen = Overdue()
    conn = await asyncpg.connect(database_url)

    async def sample() -> None:
        row = await conn.fetchrow(OVERDUE_SQL, float(PAYMENT_TIMEOUT_SECONDS))
        assert row is not None
        for kind in seen.worst:
            if row[kind] is not None:
                seen.worst[kind] = max(seen.worst[kind], row[kind])
        seen.samples += 1

    async def watch() -> None:
        while True:
            await sample()
            await asyncio.sleep(every)

    task = asyncio.create_task(watch())
    try:
        yield seen
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        try:
            await sample()
        finally:
            await conn.close()


# -- nothing lost --------------------------------------------------------------------------


async def lost_writes(pg: asyncpg.Connection, acked: Acked) -> list[str]:
    lost: list[str] = []
    rows = await pg.fetch(
        "SELECT id::text, customer_id, status, session_id::text FROM pairing_requests"
        " WHERE id = ANY($1::uuid[])",
        [*acked.opened, *acked.cancelled, *(r for _, r in acked.accepted.values())],
    )
    requests = {r["id"]: r for r in rows}
    for request_id, customer in acked.opened.items():
        if request_id not in requests or requests[request_id]["customer_id"] != customer:
            lost.append(f"request {request_id} opened (201) but not in Postgres")
    for request_id in acked.cancelled:
        if request_id not in requests or requests[request_id]["status"] != "cancelled":
            lost.append(f"request {request_id} cancelled (200) but not cancelled in Postgres")
    rows = await pg.fetch(
        "SELECT id::text, mitra_id, status FROM chat_sessions WHERE id = ANY($1::uuid[])",
        [*acked.accepted, *acked.paid, *acked.closed],
    )
    sessions = {r["id"]: r for r in rows}
    for session_id, (mitra, request_id) in acked.accepted.items():
        session, request = sessions.get(session_id), requests.get(request_id)
        if session is None or session["mitra_id"] != mitra:
            lost.append(f"session {session_id} accepted (200) but not in Postgres")
        elif request is None or request["session_id"] != session_id:
            lost.append(f"request {request_id} accepted (200) but not matched to {session_id}")
    rows = await pg.fetch(
        "SELECT reference, session_id::text FROM payments WHERE reference = ANY($1::text[])",
        list(acked.paid.values()),
    )
    payments = {r["reference"]: r["session_id"] for r in rows}
    activated = {
        r["session_id"]
        for r in await pg.fetch(
            "SELECT session_id::text FROM chat_session_events"
            " WHERE to_status = 'active' AND session_id = ANY($1::uuid[])",
            list(acked.paid),
        )
    }
    for session_id, reference in acked.paid.items():
        if payments.get(reference) != session_id or session_id not in activated:
            lost.append(f"payment {reference} of {session_id} acknowledged but not recorded")
    for session_id, status in acked.closed.items():
        if session_id not in sessions or sessions[session_id]["status"] != status:
            lost.append(f"session {session_id} answered {status} but is not in Postgres")
    online: dict[UUID, bool] = {
        r["id"]: r["is_online"]
        for r in await pg.fetch(
            "SELECT id, is_online FROM mitras WHERE id = ANY($1::uuid[])", list(acked.toggles)
        )
    }
    for mitra, (want, was_acked) in acked.toggles.items():
        if was_acked and online.get(mitra) != want:
            lost.append(f"mitra {mitra} last answered is_online={want}, Postgres says otherwise")
    return lost


# -- the mirror ----------------------------------------------------------------------------


async def drift_report(http: httpx.AsyncClient, cluster: Cluster, admin: User) -> dict[str, Any]:
    r = await http.get(cluster.url("a") + "/api/admin/availability/drift", headers=admin.headers)
    assert r.status_code == 200, r.text
    report: dict[str, Any] = r.json()
    return report


async def seconds_until_in_sync(
    http: httpx.AsyncClient, cluster: Cluster, admin: User
) -> tuple[float, dict[str, Any]]:
    """Seconds from the end of the last fault until the drift endpoint said in_sync
    (polled until MIRROR_BOUND has passed, then once more), and the last report."""
    while True:
        report = await drift_report(http, cluster, admin)
        waited = now() - cluster.last_fault_end
        if report["in_sync"] or waited > MIRROR_BOUND:
            return waited, report
        await asyncio.sleep(0.25)


# -- events across instances ---------------------------------------------------------------


async def seconds_until_events_cross(
    http: httpx.AsyncClient, cluster: Cluster, mitra: User, customer: User
) -> float:
    """A mitra online with a socket on "a"; a customer (no search open) opens a request
    on "b" naming that mitra: its `pairing.offer` crosses over Valkey pub/sub. Tried
    again (request cancelled) until EVENTS_BOUND has passed since the last fault; the
    seconds from the last fault to the first offer delivered."""
    r = await http.post(cluster.url("a") + "/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    ws_url = cluster.url("a").replace("http://", "ws://") + f"/ws?token={mitra.token}"
    async with connect(ws_url) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert ready["type"] == "ready", ready
        while True:
            r = await http.post(
                cluster.url("b") + "/api/pairing/requests",
                json={"duration_minutes": 1, "mitra_id": str(mitra.id)},
                headers=customer.headers,
            )
            assert r.status_code == 201, r.text
            request_id = r.json()["pairing_request"]["id"]
            try:
                async with asyncio.timeout(2.0):
                    while True:
                        event = json.loads(await ws.recv())
                        if event["type"] == "pairing.offer":
                            assert event["data"]["request_id"] == request_id, event
                            return now() - cluster.last_fault_end
            except TimeoutError:
                pass
            r = await http.delete(
                cluster.url("b") + f"/api/pairing/requests/{request_id}",
                headers=customer.headers,
            )
            assert r.status_code == 200, r.text
            assert now() - cluster.last_fault_end < EVENTS_BOUND, "no event crossed instances"


async def assert_survived(
    cluster: Cluster, load: Load, pg: asyncpg.Connection, overdue: Overdue
) -> None:
    """Every check above; the run's summary in each message."""
    calls = summary(load.calls)
    bad = bad_answers(cluster, load.calls)
    assert not bad, f"{len(bad)} bad answers: {bad[:20]}\n{calls}\nfaults: {cluster.faults}"
    lost = await lost_writes(pg, load.acked)
    assert not lost, f"lost: {lost[:20]}\n{calls}"
    assert overdue.samples >= 10, overdue
    for kind, late in overdue.worst.items():
        assert late <= STUCK_BOUND, f"{kind} stuck {late:.1f}s past its deadline\n{calls}"
    # The load did real work through the faults, or the checks above prove nothing.
    acked = load.acked
    assert len(acked.accepted) >= 3 and len(acked.paid) >= 2 and len(acked.closed) >= 1, calls
