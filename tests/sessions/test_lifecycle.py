"""The chat-session lifecycle on real servers: pay, extend, end, expire, time out.

After every step: the mirror's `mitra:capacity:<id>` equals COUNT(*) in Postgres, and the
status history holds one row per change (from, to, by whom, why).
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from halobestie.clock import iso
from halobestie.timers import run_due_timers
from tests.conftest import AppFactory, Instance
from tests.sessions.helpers import (
    assert_capacity_mirrored,
    history,
    make_cast,
    make_pending_session,
    minutes,
    pay,
    post_webhook,
    session_status,
    timers,
    url,
    webhook_body,
)


async def test_full_lifecycle_through_the_api(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    c, m = cast.customer, cast.mitra
    client, clock = inst.client, inst.clock
    assert (await client.post("/api/mitra/status/online", headers=m.headers)).status_code == 200

    r = await client.post("/api/pairing/requests", json={"duration_minutes": 30}, headers=c.headers)
    assert r.status_code == 201, r.text
    request_id = r.json()["pairing_request"]["id"]
    r = await client.post(f"/api/pairing/requests/{request_id}/accept", headers=m.headers)
    assert r.status_code == 200, r.text
    session = r.json()["session"]
    sid = session["id"]
    assert session["status"] == "pending_payment"
    assert session["started_at"] is None and session["ends_at"] is None
    assert await assert_capacity_mirrored(pg, valkey, m) == 1

    clock.advance(20)
    paid_at = clock.now()
    session = await pay(inst, sid, "pay-001")
    assert session["status"] == "active"
    assert session["started_at"] == iso(paid_at)
    assert session["ends_at"] == iso(paid_at + minutes(30))
    assert await timers(pg, sid) == {
        "session_expiry": paid_at + minutes(30),
        "session_warning": paid_at + minutes(30 - 5),  # SESSION_WARNING_SECONDS: 300, 60
    }
    assert await assert_capacity_mirrored(pg, valkey, m) == 1

    clock.advance(60)
    r = await client.post(url(sid, "extend"), json={"minutes": 15}, headers=c.headers)
    assert r.status_code == 200, r.text
    ends_at = paid_at + minutes(45)
    assert r.json()["session"]["ends_at"] == iso(ends_at)
    assert r.json()["session"]["duration_minutes"] == 30  # the booked length
    assert await timers(pg, sid) == {
        "session_expiry": paid_at + minutes(45),
        "session_warning": paid_at + minutes(45 - 5),
    }
    assert await assert_capacity_mirrored(pg, valkey, m) == 1

    clock.advance(60)
    r = await client.post(url(sid, "end"), headers=c.headers)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["status"] == "ended"
    assert await timers(pg, sid) == {}
    assert await assert_capacity_mirrored(pg, valkey, m) == 0

    assert await history(pg, sid) == [
        (None, "pending_payment", m.id, "mitra", "offer accepted"),
        ("pending_payment", "active", None, "payment", "paid, reference pay-001"),
        ("active", "active", c.id, "customer", f"extended by 15 minutes to {iso(ends_at)}"),
        ("active", "ended", c.id, "customer", "ended by the customer"),
    ]  # fmt: skip
    r = await client.get(url(sid, "events"), headers=m.headers)
    assert r.status_code == 200, r.text
    events = r.json()["events"]
    assert [(e["from"], e["to"], e["actor_role"]) for e in events] == [
        (None, "pending_payment", "mitra"),
        ("pending_payment", "active", "payment"),
        ("active", "active", "customer"),
        ("active", "ended", "customer"),
    ]
    assert events[1]["at"] == iso(paid_at) and events[1]["actor_id"] is None
    assert events[3]["at"] == iso(clock.now()) and events[3]["actor_id"] == str(c.id)


async def test_an_unpaid_session_is_cancelled_once_the_payment_timeout_passes(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1
    timeout = inst.ctx.settings.payment_timeout_seconds

    assert await run_due_timers(inst.ctx, inst.clock.advance(timeout - 1)) == 0
    assert await session_status(pg, sid) == "pending_payment"

    assert await run_due_timers(inst.ctx, inst.clock.advance(1)) == 1
    assert await session_status(pg, sid) == "cancelled"
    assert (await history(pg, sid))[-1] == (
        "pending_payment", "cancelled", None, "system", "payment timeout",
    )  # fmt: skip
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 0

    # Money arriving now finds nothing to pay; the timer does not fire twice.
    r = await post_webhook(inst, webhook_body(sid, "late-payment"))
    assert r.status_code == 409 and r.json()["error"] == "invalid_state"
    assert await pg.fetchval("SELECT count(*) FROM payments") == 0
    assert await run_due_timers(inst.ctx, inst.clock.advance(3600)) == 0
    assert len(await history(pg, sid)) == 2


async def test_an_active_session_expires_at_ends_at_and_not_before(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=10)
    await pay(inst, sid)
    ends_at = inst.clock.now() + minutes(10)

    # Only the session's warning (session.ending_soon, tests/sessions/test_warnings.py).
    assert await run_due_timers(inst.ctx, ends_at - minutes(1 / 60)) == 1
    assert await session_status(pg, sid) == "active"
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1

    assert await run_due_timers(inst.ctx, ends_at) == 1
    assert await session_status(pg, sid) == "expired"
    assert (await history(pg, sid))[-1] == ("active", "expired", None, "system", "ends_at reached")
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 0
    r = await inst.client.get(url(sid), headers=cast.customer.headers)
    assert r.json()["session"]["status"] == "expired"


async def test_extend_moves_the_expiry_so_it_fires_at_the_new_time_only(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=10)
    await pay(inst, sid)
    old_end = inst.clock.now() + minutes(10)
    for _ in range(2):
        r = await inst.client.post(
            url(sid, "extend"), json={"minutes": 5}, headers=cast.customer.headers
        )
        assert r.status_code == 200, r.text
    new_end = old_end + minutes(10)
    assert r.json()["session"]["ends_at"] == iso(new_end)

    assert await run_due_timers(inst.ctx, old_end) == 0
    # Only the session's warning (session.ending_soon), moved with ends_at.
    assert await run_due_timers(inst.ctx, new_end - minutes(1 / 60)) == 1
    assert await session_status(pg, sid) == "active"
    assert await run_due_timers(inst.ctx, new_end) == 1
    assert await session_status(pg, sid) == "expired"
    assert [h[:2] for h in await history(pg, sid)] == [
        (None, "pending_payment"), ("pending_payment", "active"),
        ("active", "active"), ("active", "active"), ("active", "expired"),
    ]  # fmt: skip
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 0


async def test_an_expiry_timer_due_before_ends_at_rearms_instead_of_expiring(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """A stale timer (e.g. written before an extension landed) must not cut a paid
    session short: it re-arms at `ends_at` and fires there."""
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=10)
    await pay(inst, sid)
    ends_at = inst.clock.now() + minutes(10)
    early = inst.clock.now() + minutes(2)
    await pg.execute(
        "UPDATE timers SET due_at = $2 WHERE ref_id = $1 AND kind = 'session_expiry'", sid, early
    )
    await run_due_timers(inst.ctx, early)
    assert await session_status(pg, sid) == "active"
    assert await timers(pg, sid) == {
        "session_expiry": ends_at,
        "session_warning": ends_at - minutes(5),
    }
    # The warning (silent: too late to warn), then the expiry.
    assert await run_due_timers(inst.ctx, ends_at) == 2
    assert await session_status(pg, sid) == "expired"


async def test_timers_of_a_session_that_moved_on_do_nothing(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    paid = await make_pending_session(inst, cast.customer, cast.mitra)
    await pay(inst, paid)
    ended = await make_pending_session(inst, cast.other_customer, cast.mitra)
    await pay(inst, ended, "ref-2")
    r = await inst.client.post(url(ended, "end"), headers=cast.mitra.headers)
    assert r.json()["session"]["status"] == "ended"
    # Stale timers that should not exist any more, due now.
    now = inst.clock.now()
    for kind, sid in (("payment_timeout", paid), ("session_expiry", ended)):
        await pg.execute(
            "INSERT INTO timers (kind, ref_id, due_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (kind, ref_id) DO UPDATE SET due_at = $3, fired_at = NULL",
            kind,
            sid,
            now,
        )
    assert await run_due_timers(inst.ctx, now) == 2
    assert await session_status(pg, paid) == "active"
    assert await session_status(pg, ended) == "ended"
    assert len(await history(pg, paid)) == 2 and len(await history(pg, ended)) == 3
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 1


async def test_end_is_idempotent_whoever_ends_and_however_often(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    c, m = cast.customer, cast.mitra
    sid = await make_pending_session(inst, c, m)
    await pay(inst, sid)
    results = await asyncio.gather(
        *(inst.client.post(url(sid, "end"), headers=p.headers) for p in (c, m, c, m))
    )
    assert [r.status_code for r in results] == [200] * 4
    assert {r.json()["session"]["status"] for r in results} == {"ended"}
    ends = [h for h in await history(pg, sid) if h[1] == "ended"]
    assert len(ends) == 1 and ends[0][3] in ("customer", "mitra")
    assert await assert_capacity_mirrored(pg, valkey, m) == 0

    r = await inst.client.post(url(sid, "end"), headers=m.headers)
    assert r.status_code == 200 and r.json()["session"]["status"] == "ended"
    assert len(await history(pg, sid)) == 3


async def test_ending_an_unpaid_session_cancels_it_and_its_payment_timeout(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    cast = await make_cast(inst)
    sid = await make_pending_session(inst, cast.customer, cast.mitra)
    r = await inst.client.post(url(sid, "end"), headers=cast.mitra.headers)
    assert r.status_code == 200, r.text
    assert r.json()["session"]["status"] == "cancelled"
    assert (await history(pg, sid))[-1] == (
        "pending_payment", "cancelled", cast.mitra.id, "mitra", "ended by the mitra",
    )  # fmt: skip
    assert await timers(pg, sid) == {}
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra) == 0
    assert await run_due_timers(inst.ctx, inst.clock.advance(86400)) == 0


async def test_extend_is_409_unless_the_session_is_active_and_running(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    c = cast.customer
    sid = await make_pending_session(inst, c, cast.mitra, minutes=10)

    async def extend() -> Any:
        return await inst.client.post(url(sid, "extend"), json={"minutes": 5}, headers=c.headers)

    r = await extend()
    assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
    assert "pending_payment" in r.json()["detail"]
    await pay(inst, sid)
    # Past ends_at, before the expiry timer ran: ran out, not extendable.
    inst.clock.advance(600)
    r = await extend()
    assert r.status_code == 409 and r.json()["error"] == "invalid_state"
    await run_due_timers(inst.ctx, inst.clock.now())
    r = await extend()
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    assert [h[1] for h in await history(pg, sid)] == ["pending_payment", "active", "expired"]


async def test_a_payment_racing_its_timeout_gives_one_consistent_outcome(
    inst: Instance, pg: asyncpg.Connection, valkey: Any
) -> None:
    """Webhook and timeout at the same instant: either paid or cancelled, never both,
    never a 500 (both lock the timer row before the session: no deadlock)."""
    cast = await make_cast(inst)
    sids = [await make_pending_session(inst, cast.customer, cast.mitra) for _ in range(6)]
    deadline = inst.clock.advance(inst.ctx.settings.payment_timeout_seconds)
    fire = asyncio.create_task(run_due_timers(inst.ctx, deadline))
    results = await asyncio.gather(
        *(post_webhook(inst, webhook_body(sid, f"race-{i}")) for i, sid in enumerate(sids))
    )
    await fire
    for sid, r in zip(sids, results, strict=True):
        status = await session_status(pg, sid)
        paid = await pg.fetchval("SELECT count(*) FROM payments WHERE session_id = $1", sid)
        if r.status_code == 200:
            assert status == "active" and paid == 1
        else:
            assert r.status_code == 409 and r.json()["error"] == "invalid_state", r.text
            assert status == "cancelled" and paid == 0
        assert len(await history(pg, sid)) == 2
    await assert_capacity_mirrored(pg, valkey, cast.mitra)


async def test_timers_pending_at_shutdown_fire_once_at_the_next_startup(
    make_app: AppFactory, pg: asyncpg.Connection, valkey: Any
) -> None:
    async with make_app() as first:
        cast = await make_cast(first)
        unpaid = await make_pending_session(first, cast.customer, cast.mitra)
        paid = await make_pending_session(first, cast.other_customer, cast.other_mitra, minutes=5)
        await pay(first, paid)
        clock = first.clock
    clock.advance(3600)  # both timers fall due while no instance runs
    async with make_app(clock=clock) as second:
        # Startup restored them before serving: no explicit run needed.
        assert await session_status(pg, unpaid) == "cancelled"
        assert await session_status(pg, paid) == "expired"
        assert await run_due_timers(second.ctx, clock.now()) == 0
    assert len(await history(pg, unpaid)) == 2 and len(await history(pg, paid)) == 3
    # The startup seed ran after the restore: both mitras read as 0.
    assert await assert_capacity_mirrored(pg, valkey, cast.mitra, absent_is_zero=True) == 0
    assert await assert_capacity_mirrored(pg, valkey, cast.other_mitra, absent_is_zero=True) == 0
