"""The customer beacon: states, the shared snapshot and its TTL, one computation per TTL
across instances, and no Postgres on its path."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from halobestie.availability.sync import recompute_capacity
from halobestie.clock import iso
from tests.availability import metric, metric_total, postgres_target, postgres_url_via
from tests.conftest import AppFactory, Instance, Servers
from tests.factories import Person, make_chat_session, make_user
from tests.support.proxy import FaultProxy

COMPUTATIONS = "halobestie_availability_snapshot_computations_total"


async def _online_mitra(inst: Instance) -> Person:
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    return mitra


async def _beacon(client: httpx.AsyncClient) -> dict[str, Any]:
    r = await client.get("/api/availability")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _fresh_beacon(inst: Instance, valkey: Any) -> dict[str, Any]:
    await valkey.delete("availability:snapshot")  # as if the TTL had run out
    return await _beacon(inst.client)


def _scraped_computations(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name + "_total" == COMPUTATIONS:
            return sum(s.value for s in family.samples if s.name == COMPUTATIONS)
    return 0.0


async def test_beacon_states_available_busy_and_offline(inst: Instance, valkey: Any) -> None:
    customer = await make_user(inst.ctx, "customer")
    body = await _fresh_beacon(inst, valkey)
    assert (body["state"], body["available_count"]) == ("offline", 0)

    first = await _online_mitra(inst)
    second = await _online_mitra(inst)
    body = await _fresh_beacon(inst, valkey)
    assert (body["state"], body["available_count"]) == ("available", 2)

    await make_chat_session(inst.ctx, customer, first, "active")
    await recompute_capacity(inst.ctx, first.id)
    body = await _fresh_beacon(inst, valkey)
    assert (body["state"], body["available_count"]) == ("available", 1)

    await make_chat_session(inst.ctx, customer, second, "pending_payment")
    await recompute_capacity(inst.ctx, second.id)
    body = await _fresh_beacon(inst, valkey)
    assert (body["state"], body["available_count"]) == ("busy", 0)

    for mitra in (first, second):
        await inst.client.post("/api/mitra/status/offline", headers=mitra.headers)
    body = await _fresh_beacon(inst, valkey)
    assert (body["state"], body["available_count"]) == ("offline", 0)


async def test_snapshot_is_stored_as_json_with_the_configured_ttl(
    make_app: AppFactory, valkey: Any
) -> None:
    async with make_app(AVAILABILITY_SNAPSHOT_TTL_SECONDS=30) as inst:
        await _online_mitra(inst)
        r = await inst.client.get("/api/availability")

        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body == {
            "state": "available",
            "available_count": 1,
            "computed_at": iso(inst.clock.now()),
        }
        assert json.loads(await valkey.get("availability:snapshot")) == body
        assert 25 < await valkey.ttl("availability:snapshot") <= 30


async def test_cached_snapshot_answers_until_it_expires(inst: Instance, valkey: Any) -> None:
    await _online_mitra(inst)
    first = await _beacon(inst.client)
    computed = metric_total(inst.ctx, COMPUTATIONS)
    await _online_mitra(inst)
    inst.clock.advance(1)

    for _ in range(5):
        assert await _beacon(inst.client) == first  # same snapshot, same computed_at
    assert metric_total(inst.ctx, COMPUTATIONS) == computed

    await valkey.pexpire("availability:snapshot", 1)
    await asyncio.sleep(0.01)
    body = await _beacon(inst.client)
    assert body["available_count"] == 2
    assert body["computed_at"] == iso(inst.clock.now())
    assert metric_total(inst.ctx, COMPUTATIONS) == computed + 1


async def test_reseed_drops_the_snapshot_built_from_the_old_mirror(inst: Instance) -> None:
    admin = await make_user(inst.ctx, "admin")
    await _online_mitra(inst)
    assert (await _beacon(inst.client))["available_count"] == 1
    await _online_mitra(inst)

    r = await inst.client.post("/api/admin/availability/reseed", headers=admin.headers)
    assert r.status_code == 200

    assert (await _beacon(inst.client))["available_count"] == 2


async def test_two_instances_compute_one_snapshot_for_fifty_concurrent_requests(
    make_app: AppFactory,
) -> None:
    async with make_app() as one, make_app(clock=one.clock) as two:
        for _ in range(3):
            await _online_mitra(one)
        before = [metric_total(i.ctx, COMPUTATIONS) for i in (one, two)]

        bodies = await asyncio.gather(*(_beacon((one if n % 2 else two).client) for n in range(50)))

        assert all(b == bodies[0] for b in bodies)
        assert bodies[0]["available_count"] == 3
        after = [metric_total(i.ctx, COMPUTATIONS) for i in (one, two)]
        assert sum(after) - sum(before) == 1, (before, after)
        scraped = [_scraped_computations((await i.client.get("/metrics")).text) for i in (one, two)]
        assert scraped == after
        # No instance fell back to an uncached or Postgres computation.
        for i in (one, two):
            assert metric(i.ctx, COMPUTATIONS, source="valkey_unlocked") == 0
            assert metric(i.ctx, COMPUTATIONS, source="postgres") == 0


async def test_beacon_answers_without_postgres(make_app: AppFactory, servers: Servers) -> None:
    async with FaultProxy(postgres_target(servers)) as proxy:
        async with make_app(DATABASE_URL=postgres_url_via(servers, proxy.port)) as inst:
            await _online_mitra(inst)
            await _online_mitra(inst)
            cached = await _beacon(inst.client)
            await proxy.cut()
            try:
                # Any Postgres statement would now fail; the cached snapshot needs none.
                for _ in range(3):
                    assert await _beacon(inst.client) == cached
                # Neither does computing a new one: the mirror holds everything.
                await inst.ctx.mirror.client.delete(inst.ctx.keys.snapshot)
                inst.clock.advance(1)
                fresh = await _beacon(inst.client)
                assert fresh["available_count"] == 2
                assert fresh["computed_at"] == iso(inst.clock.now())
                assert metric(inst.ctx, COMPUTATIONS, source="postgres") == 0
                assert metric_total(inst.ctx, "halobestie_fallback_reads_total") == 0
            finally:
                await proxy.restore()
