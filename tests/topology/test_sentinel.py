"""Valkey Sentinel (issue 12 point 1, SPEC §8): two `halobestie serve` instances find their
Valkey through three Sentinels (VALKEY_SENTINELS; VALKEY_URL names a port nothing listens
on). Under the chaos load of heartbeats, beacon polls, pairing and payments, the primary
is killed (SIGKILL) right after a deactivation that never reached the replica (frozen
meanwhile): a write lost in replication. The replica is promoted, and:

* no 5xx, no unexpected refusal, no unanswered request, nothing acknowledged lost
  (tests/chaos/checks.py);
* both deactivated mitras are refused at every heartbeat, before, during and after;
* each instance trusts the mirror again only once it was reseeded on the new primary
  (the lost deactivation is there when /readyz first says `valkey: ok` again), and its
  seed counter says so;
* the drift endpoint is `in_sync` within 10 s of the promotion;
* an event caused on one instance reaches a socket on the other again.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import valkey.asyncio as valkey_async

from tests.chaos.checks import (
    EVENTS_BOUND,
    assert_survived,
    seconds_until_events_cross,
    summary,
    watching_overdue,
)
from tests.chaos.cluster import SERVE_ENV, Cluster, Fault, now
from tests.chaos.load import CLIENT_TIMEOUT, Call, Load, User, make_users
from tests.conftest import Servers
from tests.multi.processes import ServeProcess, serve_process
from tests.topology.sentinel import MASTER, SentinelValkey, sentinel_valkey

pytestmark = [pytest.mark.topology, pytest.mark.timeout(150)]

MITRAS = 6
CUSTOMERS = 4
LOAD_LIMIT = 60.0
BEFORE_KILL = 3.0  # seconds of load before the fault
AFTER_PROMOTION = 3.0  # seconds of load after the promotion
PROMOTION_BOUND = 20.0  # kill -> the Sentinels name the replica (measured: ~2.5 s)
DRIFT_BOUND = 10.0  # promotion -> the drift endpoint in_sync (SPEC §8 via issue 12)


@dataclass
class SentinelCluster(Cluster):
    """The chaos cluster (tests/chaos/cluster.py) with its instances on the Sentinels."""

    topology: SentinelValkey | None = None

    async def start_instance(self, name: str) -> ServeProcess:
        assert self.topology is not None
        server = await self.stack.enter_async_context(
            serve_process(
                self.servers,
                self.log_dir,
                name,
                VALKEY_URL=self.topology.valkey_url,
                VALKEY_SENTINELS=self.topology.sentinels_setting,
                VALKEY_SENTINEL_MASTER=MASTER,
                **SERVE_ENV,
            )
        )
        await server.wait_serving()
        self.instances[name] = server
        return server


@dataclass
class Watch:
    """What the watchers saw: the deactivated mitras' heartbeats, and each instance's
    /readyz `valkey` state over time, with the lost write checked on the new primary
    whenever an instance trusts its mirror again after the kill."""

    refused: list[Call] = field(default_factory=list)
    ready: list[tuple[float, str, str]] = field(default_factory=list)  # (t, instance, state)
    trusted_again: dict[str, tuple[float, bool]] = field(default_factory=dict)
    killed_at: float | None = None
    degraded_since_kill: set[str] = field(default_factory=set)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[SentinelValkey]:
    with sentinel_valkey(tmp_path / "valkey") as started:
        yield started


async def _deactivate(http: httpx.AsyncClient, cluster: Cluster, admin: User, mitra: User) -> None:
    r = await http.patch(
        cluster.url("a") + f"/api/admin/mitras/{mitra.id}",
        json={"is_active": False},
        headers=admin.headers,
    )
    assert r.status_code == 200, r.text


async def _refused_heartbeats(
    load: Load, banned: list[User], watch: Watch, stop: asyncio.Event
) -> None:
    """Each deactivated mitra heartbeats every 0.1 s, on a and b in turn."""
    turn = 0
    while not stop.is_set():
        for mitra in list(banned):
            instance = ("a", "b")[turn % 2]
            turn += 1
            record = Call("banned_heartbeat", instance, now(), 0.0)
            watch.refused.append(record)
            try:
                r = await load.http.post(
                    load.cluster.url(instance) + "/api/mitra/status/heartbeat",
                    headers=mitra.headers,
                )
            except httpx.TransportError as exc:
                record.end, record.error = now(), type(exc).__name__
                continue
            record.end, record.status = now(), r.status_code
            record.code = r.json().get("error") if r.status_code >= 400 else None
        await asyncio.sleep(0.1)


async def _readiness(
    http: httpx.AsyncClient,
    cluster: Cluster,
    topology: SentinelValkey,
    lost: User,
    watch: Watch,
    stop: asyncio.Event,
) -> None:
    """/readyz of both instances every 50 ms. The first `ok` after a `degraded` seen
    since the kill: is the lost deactivation on the new primary at that moment?"""
    primary: Any = valkey_async.Valkey(port=topology.replica.port, socket_timeout=1)
    try:
        while not stop.is_set():
            for name in ("a", "b"):
                r = await http.get(cluster.url(name) + "/readyz")
                state = str(r.json()["valkey"])
                watch.ready.append((now(), name, state))
                if watch.killed_at is None:
                    continue
                if state == "degraded":
                    watch.degraded_since_kill.add(name)
                elif name in watch.degraded_since_kill and name not in watch.trusted_again:
                    member = await primary.sismember("mitras:deactivated", str(lost.id))
                    watch.trusted_again[name] = (now(), bool(member))
            await asyncio.sleep(0.05)
    finally:
        await primary.aclose()


async def _kill_the_primary_after_a_write_it_never_replicated(
    http: httpx.AsyncClient,
    cluster: SentinelCluster,
    admin: User,
    lost: User,
    banned: list[User],
    watch: Watch,
) -> Fault:
    """The replica frozen and cut off (CLIENT KILL TYPE replica on the primary: a frozen
    replica would still find in its socket whatever the primary had sent it), `lost`
    deactivated (on the primary only), the primary killed (SIGKILL), the replica thawed.
    The deactivation was on the primary and is not on the replica: lost in replication."""
    assert cluster.topology is not None
    topology = cluster.topology
    primary: Any = valkey_async.Valkey(port=topology.primary.port, socket_timeout=1)
    replica: Any = valkey_async.Valkey(port=topology.replica.port, socket_timeout=1)
    try:
        os.kill(topology.replica.pid, signal.SIGSTOP)
        try:
            await primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
            await _deactivate(http, cluster, admin, lost)
            banned.append(lost)
            assert await primary.sismember("mitras:deactivated", str(lost.id))
            fault = Fault("valkey", "kill", now())
            cluster.faults.append(fault)
            watch.killed_at = fault.start
            await asyncio.to_thread(topology.primary.kill)
        finally:
            os.kill(topology.replica.pid, signal.SIGCONT)
        replicated = await replica.sismember("mitras:deactivated", str(lost.id))
        assert not replicated, "the deactivation reached the replica: nothing was lost"
        return fault
    finally:
        await primary.aclose()
        await replica.aclose()


async def _seconds_until_in_sync(
    http: httpx.AsyncClient, cluster: Cluster, admin: User, since: float
) -> tuple[float, dict[str, Any]]:
    """Seconds from `since` until the drift endpoint says in_sync (polled every 0.1 s, up
    to DRIFT_BOUND and once more), and its last report. An instance whose breaker has not
    yet seen the new primary answers 503 valkey_unavailable: not yet."""
    report: dict[str, Any] = {}
    while True:
        r = await http.get(
            cluster.url("a") + "/api/admin/availability/drift", headers=admin.headers
        )
        if r.status_code == 200:
            report = r.json()
        else:
            assert (r.status_code, r.json()["error"]) == (503, "valkey_unavailable"), r.text
        waited = now() - since
        if report.get("in_sync") or waited > DRIFT_BOUND:
            return waited, report
        await asyncio.sleep(0.1)


async def _reconnect_seeds(http: httpx.AsyncClient, cluster: Cluster, name: str) -> float:
    text = (await http.get(cluster.url(name) + "/metrics")).text
    match = re.search(r'^halobestie_mirror_seeds_total\{reason="reconnect"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_a_killed_primary_is_replaced_and_the_mirror_is_reseeded_before_it_is_trusted(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, topology: SentinelValkey
) -> None:
    async with AsyncExitStack() as stack, httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as http:
        cluster = SentinelCluster(clean, tmp_path, topology.primary, stack, topology=topology)
        await asyncio.gather(cluster.start_instance("a"), cluster.start_instance("b"))
        # The load's mitras and customers, the events witnesses, and two to deactivate.
        admin, mitras, customers = await make_users(pg, MITRAS + 3, CUSTOMERS + 1)
        load = Load(cluster, http, seed=17)
        await load.login_all([admin, *mitras, *customers])
        early, lost = mitras.pop(), mitras.pop()
        witnesses = mitras.pop(), customers.pop()
        seeds_before = {n: await _reconnect_seeds(http, cluster, n) for n in ("a", "b")}

        # `early` deactivated before anything (replicated); `lost` online and heartbeating.
        await _deactivate(http, cluster, admin, early)
        r = await http.post(cluster.url("b") + "/api/mitra/status/online", headers=lost.headers)
        assert r.status_code == 200, r.text
        banned = [early]
        watch, stop = Watch(), asyncio.Event()
        watchers = [
            asyncio.create_task(_refused_heartbeats(load, banned, watch, stop)),
            asyncio.create_task(_readiness(http, cluster, topology, lost, watch, stop)),
        ]
        try:
            async with watching_overdue(clean.database_url) as overdue:
                running = asyncio.create_task(load.run(mitras, customers, LOAD_LIMIT))
                try:
                    await asyncio.sleep(BEFORE_KILL)
                    fault = await _kill_the_primary_after_a_write_it_never_replicated(
                        http, cluster, admin, lost, banned, watch
                    )
                    promoted = await topology.wait_promoted(PROMOTION_BOUND)
                    fault.end = promoted
                    # Measured under load, from the promotion on.
                    syncing = asyncio.create_task(
                        _seconds_until_in_sync(http, cluster, admin, promoted)
                    )
                    await asyncio.sleep(AFTER_PROMOTION)
                finally:
                    load.stop()
                    await running
            in_sync, report = await syncing
            after_load, final = await _seconds_until_in_sync(http, cluster, admin, promoted)
        finally:
            stop.set()
            await asyncio.gather(*watchers)

        await assert_survived(cluster, load, pg, overdue)
        assert report["in_sync"], (in_sync, report)
        assert in_sync <= DRIFT_BOUND, in_sync
        assert final["in_sync"], (after_load, final)

        wrong = [c for c in watch.refused if (c.status, c.code) != (403, "mitra_deactivated")]
        assert not wrong, f"{len(wrong)} of {len(watch.refused)}: {wrong[:10]}"
        assert sum(c.start > promoted for c in watch.refused) >= 10, len(watch.refused)

        # Each instance noticed the failover, trusted the mirror again only once the seed
        # had written the lost deactivation into the new primary, and counted that seed.
        assert watch.degraded_since_kill == {"a", "b"}, watch.ready[-20:]
        assert set(watch.trusted_again) == {"a", "b"}, watch.ready[-20:]
        for name, (at, reseeded) in watch.trusted_again.items():
            assert reseeded, f"{name} trusted a mirror without the lost deactivation"
            assert at > promoted
            assert await _reconnect_seeds(http, cluster, name) > seeds_before[name]

        crossed = await seconds_until_events_cross(http, cluster, *witnesses)
        assert crossed <= EVENTS_BOUND, crossed

        killed = watch.killed_at
        assert killed is not None
        trusted = {n: round(at - killed, 2) for n, (at, _) in watch.trusted_again.items()}
        print(
            f"\npromoted {promoted - killed:.2f}s after the kill; mirror trusted again"
            f" {trusted} s after it; drift in_sync {in_sync:.2f}s after the promotion (under"
            f" load; {after_load:.2f}s once it stopped);"
            f" events crossing {crossed:.1f}s after it\n{summary(load.calls)}"
            f"\ndeactivated heartbeats: {len(watch.refused)}, all 403 mitra_deactivated"
            f" ({time.strftime('%H:%M:%S')})"
        )
