"""App instances and Valkey frozen (SIGSTOP) and killed (SIGKILL) under a load of
heartbeats, beacon polls, pairing and payments against two `halobestie serve` processes.
What must hold, and its bounds: tests/chaos/checks.py (and docs/subsystems/failures.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.chaos.cluster import Cluster
from tests.chaos.scenario import run_chaos
from tests.conftest import Servers

# Each run takes ~40 s on 2 busy cores; 80 s each keeps the group under 4 minutes.
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(80)]


async def test_instances_frozen_and_killed_under_load(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Instance a frozen twice for 3 s (past the 2 s idle-in-transaction cut-off, with
    whatever it held: claimed timers, row and advisory locks, requests half-answered),
    b killed and replaced by a new process, the new b frozen 3 s."""

    async def faults(cluster: Cluster) -> None:
        await asyncio.sleep(2)
        await cluster.freeze_instance("a", 3.0)
        await asyncio.sleep(1)
        await cluster.freeze_instance("a", 3.0)
        await asyncio.sleep(2)
        await cluster.kill_and_restart_instance("b", down=1.0)
        await asyncio.sleep(2)
        await cluster.freeze_instance("b", 3.0)

    await run_chaos(clean, pg, tmp_path, faults, seed=9)


async def test_valkey_frozen_killed_and_restarted_empty_under_load(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Valkey frozen 3 s (every instance's breaker opens on its first timeout), killed
    (connections and pub/sub subscriptions lost) and back empty on the same port 2 s
    later, then frozen again for 1.5 s (shorter than the subscriber's 3 s liveness
    bound: its link survives)."""

    async def faults(cluster: Cluster) -> None:
        await asyncio.sleep(3)
        await cluster.freeze_valkey(3.0)
        await asyncio.sleep(2)
        await cluster.kill_and_restart_valkey(down=2.0)
        await asyncio.sleep(3)
        await cluster.freeze_valkey(1.5)

    await run_chaos(clean, pg, tmp_path, faults, seed=11)


async def test_instances_killed_and_frozen_while_valkey_is_frozen_or_restarting(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path
) -> None:
    """Faults at once: "b" killed while Valkey is frozen, and its replacement starting
    (restore timers, seed) against that frozen Valkey; then "a" frozen while Valkey is
    killed and comes back empty."""

    async def faults(cluster: Cluster) -> None:
        await asyncio.sleep(3)
        valkey_frozen = asyncio.create_task(cluster.freeze_valkey(4.0))
        await asyncio.sleep(0.5)
        await cluster.kill_and_restart_instance("b", down=0.5)
        await valkey_frozen
        await asyncio.sleep(2)
        a_frozen = asyncio.create_task(cluster.freeze_instance("a", 3.0))
        await asyncio.sleep(0.5)
        await cluster.kill_and_restart_valkey(down=1.5)
        await a_frozen

    await run_chaos(clean, pg, tmp_path, faults, seed=13)
