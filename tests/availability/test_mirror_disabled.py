"""VALKEY_MIRROR_ENABLED=false: the design before the mirror, kept runnable for
benchmarks. Every read and heartbeat goes to Postgres and nothing is written to Valkey."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from tests.conftest import AppFactory
from tests.factories import make_user


async def test_disabled_mirror_serves_everything_from_postgres_and_writes_no_keys(
    make_app: AppFactory, valkey: Any, pg: asyncpg.Connection
) -> None:
    async with make_app(VALKEY_MIRROR_ENABLED=False) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200, r.text

        inst.clock.advance(30)
        r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        assert r.status_code == 200, r.text
        seen = await pg.fetchval("SELECT last_heartbeat_at FROM mitras WHERE id = $1", mitra.id)
        assert seen == inst.clock.now()

        r = await inst.client.get("/api/availability")
        assert r.json()["state"] == "available"
        assert r.json()["available_count"] == 1

        admin = await make_user(inst.ctx, "admin")
        r = await inst.client.get("/api/admin/dashboard", headers=admin.headers)
        assert r.json()["source"] == "postgres"
        assert r.json()["online_count"] == 1

        r = await inst.client.get("/readyz")
        assert r.json() == {"postgres": "ok", "valkey": "degraded"}
        metrics = (await inst.client.get("/metrics")).text
        assert 'halobestie_valkey_errors_total{operation="heartbeat"} 0.0' in metrics

    assert await valkey.keys("*") == []


async def test_postgres_beacon_is_computed_once_for_a_burst_of_concurrent_polls(
    make_app: AppFactory,
) -> None:
    async with make_app(VALKEY_MIRROR_ENABLED=False) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
        replies = await asyncio.gather(*(inst.client.get("/api/availability") for _ in range(30)))
        assert {r.status_code for r in replies} == {200}
        assert {r.json()["available_count"] for r in replies} == {1}
        computed = inst.ctx.metrics.snapshot_computations.labels(source="postgres")._value.get()
        assert computed == 1
