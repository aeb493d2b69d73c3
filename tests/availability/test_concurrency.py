"""The mirror must not drift under concurrency: racing writers, on one instance or on
two, leave Valkey equal to Postgres without waiting for a reseed."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.availability.drift import compute_drift
from halobestie.availability.seed import seed_mirror
from halobestie.availability.sync import recompute_capacity
from halobestie.context import Context
from tests.availability import NO_DIFFERENCES, metric_total, open_sessions
from tests.conftest import AppFactory, Instance
from tests.factories import PASSWORD, Person, make_user

SEEDS = "halobestie_mirror_seeds_total"


async def _second_login(inst: Instance, person: Person) -> dict[str, str]:
    r = await inst.client.post(
        "/api/auth/login", json={"email": person.user.email, "password": PASSWORD}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


async def _toggle(client: httpx.AsyncClient, headers: dict[str, str], start: str) -> list[int]:
    """50 alternating online/offline requests, fired all at once."""
    states = ("online", "offline") if start == "online" else ("offline", "online")
    requests = [
        client.post(f"/api/mitra/status/{states[n % 2]}", headers=headers) for n in range(50)
    ]
    return [r.status_code for r in await asyncio.gather(*requests)]


async def _assert_mirror_equals_postgres(
    ctx: Context, valkey: Any, pg: asyncpg.Connection, mitra_id: UUID
) -> None:
    online = await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra_id)
    assert await valkey.sismember(ctx.keys.online, str(mitra_id)) == int(online)
    assert (await valkey.exists(ctx.keys.heartbeat(mitra_id))) == int(online)
    drift = await compute_drift(ctx)
    assert drift.as_dict() == {"in_sync": True, "differences": NO_DIFFERENCES}


async def test_two_clients_toggling_one_mitra_on_one_instance_leave_no_drift(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    other_login = await _second_login(inst, mitra)
    for round_ in range(3):
        results = await asyncio.gather(
            _toggle(inst.client, mitra.headers, "online" if round_ % 2 else "offline"),
            _toggle(inst.client, other_login, "offline" if round_ % 2 else "online"),
        )
        assert {code for codes in results for code in codes} == {200}
        await _assert_mirror_equals_postgres(inst.ctx, valkey, pg, mitra.id)
    assert metric_total(inst.ctx, SEEDS) == 1  # the startup seed only: no reseed healed it


async def test_two_instances_toggling_one_mitra_leave_no_drift(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    async with make_app() as one, make_app(clock=one.clock) as two:
        mitra = await make_user(one.ctx, "mitra")
        other_login = await _second_login(two, mitra)
        for round_ in range(3):
            results = await asyncio.gather(
                _toggle(one.client, mitra.headers, "online" if round_ % 2 else "offline"),
                _toggle(two.client, other_login, "offline" if round_ % 2 else "online"),
            )
            assert {code for codes in results for code in codes} == {200}
            await _assert_mirror_equals_postgres(one.ctx, valkey, pg, mitra.id)
        assert metric_total(one.ctx, SEEDS) == 1
        assert metric_total(two.ctx, SEEDS) == 1


async def test_many_mitras_toggled_at_random_across_two_instances_stay_in_sync(
    make_app: AppFactory,
) -> None:
    rng = random.Random(7)
    async with make_app() as one, make_app(clock=one.clock) as two:
        mitras = [await make_user(one.ctx, "mitra") for _ in range(8)]
        requests = [
            rng.choice((one, two)).client.post(
                f"/api/mitra/status/{rng.choice(('online', 'offline'))}", headers=m.headers
            )
            for m in mitras
            for _ in range(12)
        ]
        rng.shuffle(requests)
        responses = await asyncio.gather(*requests)
        assert {r.status_code for r in responses} == {200}
        drift = await compute_drift(two.ctx)
        assert drift.as_dict() == {"in_sync": True, "differences": NO_DIFFERENCES}


async def test_deactivation_racing_with_toggles_leaves_no_drift(
    inst: Instance, valkey: Any, pg: asyncpg.Connection
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    patches = [
        inst.client.patch(
            f"/api/admin/mitras/{mitra.id}", json={"is_active": n % 2 == 1}, headers=admin.headers
        )
        for n in range(10)
    ]
    patched, codes = await asyncio.gather(
        asyncio.gather(*patches), _toggle(inst.client, mitra.headers, "online")
    )
    assert {r.status_code for r in patched} == {200}
    # Requests racing the revocation are refused one way or another, never a 5xx.
    assert set(codes) <= {200, 401, 403}, codes
    active = await pg.fetchval("SELECT is_active FROM mitras WHERE id = $1", mitra.id)
    assert await valkey.sismember(inst.ctx.keys.deactivated, str(mitra.id)) == int(not active)
    await _assert_mirror_equals_postgres(inst.ctx, valkey, pg, mitra.id)


async def _open_then_recompute(ctx: Context, customer: UUID, mitra: UUID, status: str) -> UUID:
    async with ctx.db.connection() as conn:
        session_id: UUID = await conn.fetchval(
            "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes)"
            " VALUES ($1, $2, $3, 30) RETURNING id",
            customer,
            mitra,
            status,
        )
    await recompute_capacity(ctx, mitra)
    return session_id


async def _close_then_recompute(ctx: Context, session_id: UUID, mitra: UUID, status: str) -> None:
    async with ctx.db.connection() as conn:
        await conn.execute("UPDATE chat_sessions SET status = $2 WHERE id = $1", session_id, status)
    await recompute_capacity(ctx, mitra)


async def test_concurrent_capacity_recomputes_end_equal_to_the_count(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    rng = random.Random(11)
    async with make_app() as one, make_app(clock=one.clock) as two:
        customer = await make_user(one.ctx, "customer")
        mitra = await make_user(one.ctx, "mitra")
        key = one.ctx.keys.capacity(mitra.id)
        ctxs = (one.ctx, two.ctx)

        opened = await asyncio.gather(
            *(
                _open_then_recompute(
                    ctxs[n % 2], customer.id, mitra.id, rng.choice(("active", "pending_payment"))
                )
                for n in range(30)
            )
        )
        assert await valkey.get(key) == "30"

        closing = rng.sample(opened, 18)
        await asyncio.gather(
            *(
                _close_then_recompute(
                    ctxs[n % 2], s, mitra.id, rng.choice(("ended", "cancelled", "expired"))
                )
                for n, s in enumerate(closing)
            ),
            *(
                _open_then_recompute(ctxs[n % 2], customer.id, mitra.id, "pending_payment")
                for n in range(5)
            ),
        )
        assert await valkey.get(key) == str(await open_sessions(pg, mitra.id)) == "17"

        still_open = [
            r[0]
            for r in await pg.fetch(
                "SELECT id FROM chat_sessions"
                " WHERE mitra_id = $1 AND status IN ('active', 'pending_payment')",
                mitra.id,
            )
        ]
        await asyncio.gather(
            *(
                _close_then_recompute(ctxs[n % 2], s, mitra.id, "ended")
                for n, s in enumerate(still_open)
            )
        )
        assert await valkey.get(key) == "0"


async def test_a_mirror_write_delayed_past_a_newer_commit_does_not_overwrite_it(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    """Instance one reads "online" and its Valkey write stalls (slow network); meanwhile
    instance two commits "offline" and mirrors it. The stalled write must not land last
    with its older state."""
    async with make_app() as one, make_app(clock=one.clock) as two:
        mitra = await make_user(one.ctx, "mitra")
        stalled = asyncio.Event()
        real_write = one.ctx.mirror.write

        async def slow_write(name: str, op: Any) -> bool:
            if name == "sync_mitras" and not stalled.is_set():
                stalled.set()
                await asyncio.sleep(0.3)
            return await real_write(name, op)

        one.ctx.mirror.write = slow_write  # type: ignore[method-assign]
        going_online = asyncio.create_task(
            one.client.post("/api/mitra/status/online", headers=mitra.headers)
        )
        await stalled.wait()  # one has read the committed "online" state
        r = await two.client.post("/api/mitra/status/offline", headers=mitra.headers)
        assert r.status_code == 200
        assert (await going_online).status_code == 200

        assert await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra.id) is False
        await _assert_mirror_equals_postgres(one.ctx, valkey, pg, mitra.id)


async def test_a_stalled_capacity_recompute_does_not_overwrite_a_newer_count(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    async with make_app() as one, make_app(clock=one.clock) as two:
        customer = await make_user(one.ctx, "customer")
        mitra = await make_user(one.ctx, "mitra")
        stalled = asyncio.Event()
        real_write = one.ctx.mirror.write

        async def slow_write(name: str, op: Any) -> bool:
            if not stalled.is_set():
                stalled.set()
                await asyncio.sleep(0.3)
            return await real_write(name, op)

        one.ctx.mirror.write = slow_write  # type: ignore[method-assign]
        stale = asyncio.create_task(
            _open_then_recompute(one.ctx, customer.id, mitra.id, "active")  # reads 1, stalls
        )
        await stalled.wait()
        await _open_then_recompute(two.ctx, customer.id, mitra.id, "pending_payment")
        await stale

        assert await open_sessions(pg, mitra.id) == 2
        assert await valkey.get(one.ctx.keys.capacity(mitra.id)) == "2"


async def test_a_toggle_committed_while_a_seed_is_swapping_sets_is_not_lost(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    """The seed read its snapshot (mitra offline) and stalls before swapping the sets in;
    meanwhile the mitra goes online on another instance. The swap must not erase it."""
    async with make_app() as one, make_app(clock=one.clock) as two:
        mitra = await make_user(one.ctx, "mitra")
        stalled = asyncio.Event()
        real_raw = one.ctx.mirror.raw

        async def slow_raw(name: str, op: Any) -> Any:
            if name == "seed" and not stalled.is_set():
                stalled.set()
                await asyncio.sleep(0.3)
            return await real_raw(name, op)

        one.ctx.mirror.raw = slow_raw  # type: ignore[method-assign]
        seeding = asyncio.create_task(seed_mirror(one.ctx, "manual"))
        await stalled.wait()
        r = await two.client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200
        await seeding

        assert await pg.fetchval("SELECT is_online FROM mitras WHERE id = $1", mitra.id) is True
        await _assert_mirror_equals_postgres(one.ctx, valkey, pg, mitra.id)
