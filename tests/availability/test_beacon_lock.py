"""The beacon's compute lock against a dead or slow holder (issue 9, part 5): waiters are
served the last snapshot or compute once per instance, never once per request; the
lease is sized to the computation; release is owner-checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from halobestie.availability import beacon, queries
from halobestie.availability.beacon import beacon_local
from halobestie.clock import iso
from halobestie.errors import MirrorUnavailable
from tests.availability import metric, metric_total
from tests.conftest import AppFactory, Instance
from tests.factories import make_user

COMPUTATIONS = "halobestie_availability_snapshot_computations_total"
LOCK = "availability:snapshot:lock"
SNAPSHOT = "availability:snapshot"
LAST = "availability:snapshot:last"
DEAD_OWNER = "token-of-an-instance-that-was-killed"


async def _online_mitras(inst: Instance, count: int) -> None:
    for _ in range(count):
        mitra = await make_user(inst.ctx, "mitra")
        r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200, r.text


async def _beacon(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/availability")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _polls(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Twenty concurrent polls, then ten one after another."""
    bodies = list(await asyncio.gather(*(_beacon(client) for _ in range(20))))
    for _ in range(10):
        bodies.append(await _beacon(client))
    return bodies


async def test_a_dead_holder_s_lock_is_answered_with_the_last_snapshot_and_no_computation(
    inst: Instance, valkey: Any
) -> None:
    await _online_mitras(inst, 2)
    first = await _beacon(inst.client)
    assert json.loads(await valkey.get(LAST)) == first
    computed = metric_total(inst.ctx, COMPUTATIONS)
    # The TTL ran out while an instance that then was killed held the lock.
    await valkey.delete(SNAPSHOT)
    await valkey.set(LOCK, DEAD_OWNER, px=60_000)
    await _online_mitras(inst, 1)
    inst.clock.advance(3)

    bodies = await _polls(inst.client)

    # Stale, and saying so: computed_at is the last computation's, 3 s ago.
    assert all(b == first for b in bodies), bodies
    assert first["computed_at"] != iso(inst.clock.now())
    assert metric_total(inst.ctx, COMPUTATIONS) == computed
    assert await valkey.get(LOCK) == DEAD_OWNER  # nobody deleted a lock it does not own

    # Once the dead holder's lease is over, the next poll computes a fresh one.
    await valkey.delete(LOCK)
    fresh = await _beacon(inst.client)
    assert (fresh["available_count"], fresh["computed_at"]) == (3, iso(inst.clock.now()))


async def test_a_dead_holder_s_lock_and_no_last_snapshot_cost_one_computation_per_instance(
    make_app: AppFactory, valkey: Any
) -> None:
    async with make_app() as one, make_app(clock=one.clock) as two:
        await _online_mitras(one, 3)
        await valkey.delete(SNAPSHOT, LAST)  # a Valkey that came back empty, say
        await valkey.set(LOCK, DEAD_OWNER, px=60_000)

        bodies = [b for batch in await asyncio.gather(_polls(one.client), _polls(two.client))
                  for b in batch]  # fmt: skip

        assert {b["available_count"] for b in bodies} == {3}
        per_instance = [metric(i.ctx, COMPUTATIONS, source="valkey_unlocked") for i in (one, two)]
        assert all(n <= 1 for n in per_instance), per_instance
        assert sum(per_instance) >= 1
        # What was computed was shared: later polls on either instance read it.
        done = [metric_total(i.ctx, COMPUTATIONS) for i in (one, two)]
        for i in (one, two):
            assert await _beacon(i.client) == bodies[-1]
        assert [metric_total(i.ctx, COMPUTATIONS) for i in (one, two)] == done
        assert await valkey.get(LOCK) == DEAD_OWNER


async def test_a_holder_that_outlived_its_lease_leaves_the_next_holder_s_lock(
    make_app: AppFactory, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases: list[int] = []
    real_find_pool = queries.find_pool

    async def slow_find_pool(ctx: Any, now: Any, **kw: Any) -> Any:
        leases.append(await valkey.pttl(LOCK))
        # While this holder computes, its lease runs out and another instance wins.
        await valkey.set(LOCK, "the-next-holder", px=60_000)
        return await real_find_pool(ctx, now, **kw)

    monkeypatch.setattr(beacon, "find_pool", slow_find_pool)
    async with make_app(AVAILABILITY_SNAPSHOT_TTL_SECONDS=30) as inst:
        await _online_mitras(inst, 1)
        body = await _beacon(inst.client)

        assert body["available_count"] == 1
        assert await valkey.get(LOCK) == "the-next-holder"
        assert json.loads(await valkey.get(SNAPSHOT)) == body
        # The lease was sized to a computation (2 s before any was measured), not the
        # 30 s TTL.
        assert len(leases) == 1 and 0 < leases[0] <= 2_000, leases


async def test_a_holder_whose_computation_fails_releases_its_own_lock(
    inst: Instance, valkey: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _online_mitras(inst, 1)
    await valkey.delete(SNAPSHOT, LAST)

    async def failing_find_pool(ctx: Any, now: Any, **kw: Any) -> Any:
        assert await valkey.get(LOCK) is not None
        raise MirrorUnavailable("valkey failed during beacon")

    monkeypatch.setattr(beacon, "find_pool", failing_find_pool)
    body = await _beacon(inst.client)  # answered from Postgres

    assert body["available_count"] == 1
    assert metric(inst.ctx, COMPUTATIONS, source="postgres") == 1
    assert await valkey.exists(LOCK) == 0  # the next poll need not wait out the lease


@pytest.mark.parametrize(
    ("measured", "ttl", "lease"),
    [(None, 10, 2_000), (0.01, 10, 1_000), (0.6, 10, 2_400), (5.0, 10, 10_000), (None, 1, 1_000)],
)
async def test_the_lease_is_four_computations_within_a_second_and_the_ttl(
    make_app: AppFactory, measured: float | None, ttl: int, lease: int
) -> None:
    async with make_app(AVAILABILITY_SNAPSHOT_TTL_SECONDS=ttl) as inst:
        beacon_local(inst.ctx).compute_seconds = measured
        assert beacon.lease_ms(inst.ctx) == lease


async def test_a_computation_measures_itself_for_the_next_lease(
    inst: Instance, valkey: Any
) -> None:
    await _online_mitras(inst, 1)
    await valkey.delete(SNAPSHOT)
    beacon_local(inst.ctx).compute_seconds = None
    await _beacon(inst.client)
    measured = beacon_local(inst.ctx).compute_seconds
    assert measured is not None and measured > 0
