"""One chaos run: a cluster, users, the load, the faults a test scripts, then every
check of checks.py. A test is its fault script."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx

from tests.chaos.checks import (
    EVENTS_BOUND,
    MIRROR_BOUND,
    assert_survived,
    refusals,
    seconds_until_events_cross,
    seconds_until_in_sync,
    summary,
    watching_overdue,
)
from tests.chaos.cluster import Cluster, chaos_cluster
from tests.chaos.load import CLIENT_TIMEOUT, Load, make_users
from tests.conftest import Servers

MITRAS = 6
CUSTOMERS = 4
LOAD_LIMIT = 60.0  # seconds: the load's own bound; the faults end well before it
AFTER_LAST_FAULT = 3.0  # seconds of load after the last fault, then it stops

Faults = Callable[[Cluster], Awaitable[None]]


async def run_chaos(
    servers: Servers, pg: asyncpg.Connection, tmp_path: Path, faults: Faults, *, seed: int
) -> None:
    async with (
        chaos_cluster(servers, tmp_path) as cluster,
        httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as http,
    ):
        # One more mitra and customer than the load uses: the events witnesses.
        admin, mitras, customers = await make_users(pg, MITRAS + 1, CUSTOMERS + 1)
        load = Load(cluster, http, seed=seed)
        await load.login_all([admin, *mitras, *customers])
        witnesses = mitras.pop(), customers.pop()
        async with watching_overdue(servers.database_url) as overdue:
            running = asyncio.create_task(load.run(mitras, customers, LOAD_LIMIT))
            try:
                await faults(cluster)
                await asyncio.sleep(AFTER_LAST_FAULT)
            finally:
                load.stop()
                await running
        await assert_survived(cluster, load, pg, overdue)
        in_sync, report = await seconds_until_in_sync(http, cluster, admin)
        assert report["in_sync"], (in_sync, report)
        assert report["differences"]["ranked"] == {"missing": [], "extra": [], "score": {}}
        assert in_sync <= MIRROR_BOUND, in_sync
        crossed = await seconds_until_events_cross(http, cluster, *witnesses)
        assert crossed <= EVENTS_BOUND, crossed
        late = {kind: round(s, 2) for kind, s in overdue.worst.items()}
        print(
            f"\nin sync {in_sync:.1f}s and events crossing {crossed:.1f}s after the last"
            f" fault; worst lateness {late}; faults {cluster.faults}\n{summary(load.calls)}"
            f"\nnot_online: {refusals(load.calls, 'not_online')}"
        )
