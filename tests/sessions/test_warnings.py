"""Session time (SPEC §7): `session.ending_soon` at each SESSION_WARNING_SECONDS before
`ends_at`, to both parties, exactly once (durable timers), moved by extensions, gone with
the session; `server_now` in every session payload."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from halobestie.clock import ManualClock, iso
from halobestie.events.bus import bus
from halobestie.timers import run_due_timers
from tests.chat.helpers import Inbox
from tests.conftest import AppFactory, Instance
from tests.sessions.helpers import Cast, make_cast, make_pending_session, pay, timers, url


@pytest.fixture(name="inst")
async def long_token_app(make_app: AppFactory) -> AsyncIterator[Instance]:
    """The usual app, but its access tokens outlive the half hour these tests move the
    clock through (the default 900 s would expire them before the warnings)."""
    async with make_app(ACCESS_TOKEN_TTL_SECONDS=86_400) as instance:
        yield instance


def seconds(n: float) -> timedelta:
    return timedelta(seconds=n)


async def active(inst: Instance, cast: Cast, minutes: int = 30) -> tuple[UUID, datetime]:
    """An active session of `minutes` and its ends_at."""
    sid = await make_pending_session(inst, cast.customer, cast.mitra, minutes=minutes)
    await pay(inst, sid, f"ref-{sid}")
    return sid, inst.clock.now() + timedelta(minutes=minutes)


def listen(inst: Instance, cast: Cast) -> dict[str, Inbox]:
    inboxes = {"customer": Inbox(), "mitra": Inbox(), "stranger": Inbox()}
    for person, inbox in zip(
        (cast.customer, cast.mitra, cast.other_customer), inboxes.values(), strict=True
    ):
        bus(inst.ctx).attach(person.id, inbox)
    return inboxes


def warnings(inbox: Inbox) -> list[dict[str, Any]]:
    return inbox.of("session.ending_soon")


async def fire(inst: Instance, at: datetime) -> int:
    inst.clock.set(at)
    return await run_due_timers(inst.ctx, at)


async def test_both_parties_are_warned_at_each_offset_exactly_once(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid, ends_at = await active(inst, cast)
    inboxes = listen(inst, cast)
    assert await timers(pg, sid) == {
        "session_expiry": ends_at,
        "session_warning": ends_at - seconds(300),
    }

    assert await fire(inst, ends_at - seconds(301)) == 0
    assert await fire(inst, ends_at - seconds(300)) == 1
    five = {"session_id": str(sid), "ends_at": iso(ends_at), "remaining_seconds": 300}
    assert warnings(inboxes["customer"]) == warnings(inboxes["mitra"]) == [five]
    assert await fire(inst, ends_at - seconds(300)) == 0  # once
    assert (await timers(pg, sid))["session_warning"] == ends_at - seconds(60)

    assert await fire(inst, ends_at - seconds(61)) == 0
    assert await fire(inst, ends_at - seconds(60)) == 1
    one = {**five, "remaining_seconds": 60}
    assert warnings(inboxes["customer"]) == warnings(inboxes["mitra"]) == [five, one]
    assert "session_warning" not in await timers(pg, sid)

    assert await fire(inst, ends_at) == 1  # the expiry, and no further warning
    assert warnings(inboxes["mitra"]) == [five, one]
    assert inboxes["stranger"].events == []


async def test_remaining_seconds_are_the_whole_seconds_actually_left(inst: Instance) -> None:
    cast = await make_cast(inst)
    _, ends_at = await active(inst, cast)
    inboxes = listen(inst, cast)
    await fire(inst, ends_at - seconds(299.4))  # fired late (a busy instance)
    assert [w["remaining_seconds"] for w in warnings(inboxes["customer"])] == [299]


async def test_warnings_due_together_are_sent_once_and_none_after_ends_at(
    inst: Instance,
) -> None:
    """No instance ran across both warnings: one event, with the time actually left."""
    cast = await make_cast(inst)
    _, ends_at = await active(inst, cast)
    inboxes = listen(inst, cast)
    assert await fire(inst, ends_at - seconds(30)) == 1
    assert [w["remaining_seconds"] for w in warnings(inboxes["mitra"])] == [30]

    other, other_ends = await active(inst, Cast(
        cast.other_customer, cast.other_mitra, cast.customer, cast.mitra, cast.admin
    ))  # fmt: skip
    await fire(inst, other_ends + seconds(5))  # past ends_at: it expires, unwarned
    assert warnings(inboxes["stranger"]) == []
    r = await inst.client.get(url(other), headers=cast.admin.headers)
    assert r.json()["session"]["status"] == "expired"


async def test_an_extension_moves_pending_warnings_and_rearms_those_back_ahead(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid, ends_at = await active(inst, cast)
    inboxes = listen(inst, cast)
    await fire(inst, ends_at - seconds(300))  # the 5-minute warning is sent

    r = await inst.client.post(
        url(sid, "extend"), json={"minutes": 10}, headers=cast.customer.headers
    )
    assert r.status_code == 200, r.text
    new_end = ends_at + timedelta(minutes=10)
    # Both lie ahead again: the 5-minute warning comes back, the 1-minute one moved.
    assert (await timers(pg, sid))["session_warning"] == new_end - seconds(300)
    assert await fire(inst, ends_at - seconds(60)) == 0  # the old moment: nothing
    assert await fire(inst, new_end - seconds(300)) == 1
    assert await fire(inst, new_end - seconds(60)) == 1
    assert [(w["ends_at"], w["remaining_seconds"]) for w in warnings(inboxes["customer"])] == [
        (iso(ends_at), 300), (iso(new_end), 300), (iso(new_end), 60),
    ]  # fmt: skip

    # One more minute with 30 s left: the 5-minute moment stays behind, the 1-minute
    # warning (already sent for the old end) lies ahead again.
    inst.clock.set(new_end - seconds(30))
    r = await inst.client.post(
        url(sid, "extend"), json={"minutes": 1}, headers=cast.customer.headers
    )
    assert r.status_code == 200, r.text
    last_end = new_end + seconds(60)
    assert (await timers(pg, sid))["session_warning"] == last_end - seconds(60)
    assert await fire(inst, last_end - seconds(60)) == 1
    assert warnings(inboxes["mitra"])[-1] == {
        "session_id": str(sid), "ends_at": iso(last_end), "remaining_seconds": 60,
    }  # fmt: skip
    assert len(warnings(inboxes["mitra"])) == 4


async def test_a_short_session_gets_only_the_warnings_still_ahead(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    cast = await make_cast(inst)
    sid, ends_at = await active(inst, cast, minutes=4)
    assert (await timers(pg, sid))["session_warning"] == ends_at - seconds(60)
    inboxes = listen(inst, cast)
    assert await fire(inst, ends_at - seconds(60)) == 1
    assert [w["remaining_seconds"] for w in warnings(inboxes["customer"])] == [60]
    one, _ = await active(inst, Cast(
        cast.other_customer, cast.other_mitra, cast.customer, cast.mitra, cast.admin
    ), minutes=1)  # fmt: skip
    assert "session_warning" not in await timers(pg, one)  # its 60 s moment is its start


async def test_closing_a_session_cancels_its_warnings(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """Ended here; rerouted and deactivated close through the same cancel of the
    session's timers (test_reroute, test_deactivation_races check they leave none)."""
    cast = await make_cast(inst)
    sid, ends_at = await active(inst, cast)
    inboxes = listen(inst, cast)
    r = await inst.client.post(url(sid, "end"), headers=cast.mitra.headers)
    assert r.json()["session"]["status"] == "ended"
    assert await pg.fetchval("SELECT count(*) FROM timers WHERE ref_id = $1", sid) == 0
    assert await fire(inst, ends_at - seconds(60)) == 0
    assert warnings(inboxes["customer"]) == warnings(inboxes["mitra"]) == []


async def test_a_warning_fires_once_across_instances_and_after_a_restart(
    make_app: AppFactory, pg: asyncpg.Connection
) -> None:
    clock = ManualClock()
    async with make_app(clock=clock) as first:
        cast = await make_cast(first)
        sid, ends_at = await active(first, cast)
    # No instance ran when the 5-minute warning fell due: the next start fires it.
    clock.set(ends_at - seconds(200))
    async with make_app(clock=clock) as second, make_app(clock=clock) as third:
        assert (await timers(pg, sid))["session_warning"] == ends_at - seconds(60)
        inboxes = listen(second, cast)
        clock.set(ends_at - seconds(60))
        both = await asyncio.gather(
            run_due_timers(second.ctx, clock.now()), run_due_timers(third.ctx, clock.now())
        )
        assert sorted(both) == [0, 1]
        assert "session_warning" not in await timers(pg, sid)
        # Whichever instance fired it, the parties on `second` hear it once.
        for inbox in (inboxes["customer"], inboxes["mitra"]):
            await eventually_one(inbox)


async def eventually_one(inbox: Inbox) -> None:
    for _ in range(250):
        if warnings(inbox):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)  # a duplicate would arrive in this window
    assert [w["remaining_seconds"] for w in warnings(inbox)] == [60]


async def test_every_session_payload_carries_server_now(inst: Instance) -> None:
    cast = await make_cast(inst)
    inboxes = listen(inst, cast)
    sid, _ = await active(inst, cast)
    inst.clock.advance(42.5)
    r = await inst.client.get(url(sid), headers=cast.customer.headers)
    assert r.json()["session"]["server_now"] == iso(inst.clock.now())
    r = await inst.client.post(
        url(sid, "extend"), json={"minutes": 5}, headers=cast.customer.headers
    )
    assert r.json()["session"]["server_now"] == iso(inst.clock.now())
    updates = inboxes["mitra"].of("session.updated")
    assert [u["session"]["server_now"] for u in updates][-1] == iso(inst.clock.now())
    assert all("server_now" in u["session"] for u in updates)
