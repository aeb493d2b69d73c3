"""The Valkey side of the availability mirror: its breaker, trust, reconnect detection.

The mirror is a cache of Postgres (rebuilt by a seeder the runtime hands it,
`availability.seed.seed_mirror`); what it holds is the availability feature's business,
when to believe it is this module's. Two flags, on purpose:
- `reachable` (the breaker, `breaker.py`; the mirror's own failure domain: event
  publishing has another): may we send commands at all? Opened by the first failed
  operation, so an outage costs one timeout, not one per request; closed again only by
  the background probe.
- `trusted`: may readers believe what Valkey says? False until a seed has run against
  the *current* Valkey server. A restart (new `run_id`) or any failure clears it, and
  only a completed reseed sets it again.

Writers need only `reachable`: they re-derive state from Postgres under a lock (see
`availability/sync.py`), so a write that lands while untrusted is still right, and a write skipped
while unreachable happens-before the reseed that closes the gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from valkey.asyncio.connection import Connection
from valkey.exceptions import ResponseError

from ..errors import MirrorUnavailable, ServiceUnavailable
from ..logs import get_logger
from ..metrics import Metrics
from .autopipe import AutoPipeline
from .breaker import Breaker
from .client import VALKEY_FAILURES, Client, connect
from .cluster import MirrorCluster
from .topology import ValkeyEndpoint

__all__ = ["VALKEY_FAILURES", "Client", "Mirror"]

log = get_logger(__name__)

T = TypeVar("T")


class Mirror:
    def __init__(
        self,
        url: str | ValkeyEndpoint,
        metrics: Metrics,
        *,
        operation_timeout: float,
        probe_interval: float,
        enabled: bool = True,
        home_key: str = "",
    ) -> None:
        self.metrics = metrics
        # A key of the mirror. In cluster mode (VALKEY_CLUSTER) every key shares its slot,
        # and the primary that serves it is the server whose lifetime counts.
        self._home_key = home_key
        self.probe_interval = probe_interval
        # Disabled = the design before the mirror (every read and heartbeat on Postgres);
        # kept runnable so benchmarks can measure both in one run.
        self.enabled = enabled
        # The mirror's own failure domain (breaker.py): closed again only by the probe.
        self.breaker = Breaker("mirror", metrics.valkey_errors, closed=enabled)
        self.trusted = False
        # Why the last probe could not reach Valkey (None: it could): the startup log
        # says whether it was credentials (topology.describe_failure).
        self.last_failure: BaseException | None = None
        # Bumped on every event that invalidates what a reader may have just read.
        self.generation = 0
        self._seeded_run_id: str | None = None
        self._seeding_run_id: str | None = None
        self._seeder: Callable[[str], Awaitable[Any]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.client = connect(url, operation_timeout=operation_timeout, on_connect=self._on_connect)
        # The heartbeat's Lua call, the beacon's GET and the write-through's Lua calls are
        # auto-pipelined (autopipe.py) over their own connections, which time out per
        # batch, not per reply: valkey-py arms an asyncio timer for every reply it reads,
        # measured at 9 % of a heartbeat's CPU.
        self.batched = AutoPipeline(
            connect(
                url,
                operation_timeout=operation_timeout,
                per_read_timeout=False,
                on_connect=self._on_connect,
            ),
            timeout=operation_timeout,
        )

    @property
    def reachable(self) -> bool:
        """May we send commands at all (the breaker closed)?"""
        return self.breaker.closed

    # -- lifecycle ---------------------------------------------------------------

    def set_seeder(self, seeder: Callable[[str], Awaitable[Any]]) -> None:
        """The function that rebuilds the mirror from Postgres (`seed.seed_mirror`)."""
        self._seeder = seeder

    def start(self) -> None:
        self._closing = False
        if self.enabled:
            self._task = asyncio.create_task(self._watch(), name="valkey-mirror-watch")

    async def close(self) -> None:
        # The flag too, not only the cancel: on 3.11 a cancel can be swallowed by an
        # asyncio.wait_for inside asyncpg (the seed), and close() would wait forever.
        self._closing = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.batched.close()
        await self.client.aclose()

    # -- operations --------------------------------------------------------------

    async def read(self, name: str, op: Callable[[Client], Awaitable[T]]) -> T:
        """Run a read against the mirror, or raise MirrorUnavailable (caller falls back)."""
        if not (self.trusted and self.reachable):
            raise MirrorUnavailable(f"mirror not trusted for {name}")
        generation = self.generation
        try:
            result = await op(self.client)
        except VALKEY_FAILURES as exc:
            self.fail(name, exc)
            raise MirrorUnavailable(f"valkey failed during {name}") from exc
        # A restart noticed while we were reading: the answer came from an empty server.
        if generation != self.generation or not self.trusted:
            raise MirrorUnavailable(f"mirror invalidated during {name}")
        return result

    async def write(self, name: str, op: Callable[[Client], Awaitable[Any]]) -> bool:
        """Best-effort write. False (logged, counted) when Valkey could not take it."""
        if not self.reachable:
            if self.enabled:
                self.breaker.skipped(name)
            return False
        try:
            await op(self.client)
        except VALKEY_FAILURES as exc:
            self.fail(name, exc)
            return False
        return True

    async def raw(self, name: str, op: Callable[[Client], Awaitable[T]]) -> T:
        """For the seed and admin tools: needs Valkey reachable, not trusted."""
        if not self.reachable:
            raise MirrorUnavailable(f"valkey unreachable for {name}")
        try:
            return await op(self.client)
        except VALKEY_FAILURES as exc:
            self.fail(name, exc)
            raise MirrorUnavailable(f"valkey failed during {name}") from exc

    def fail(self, name: str, exc: BaseException) -> None:
        self.breaker.failed(name, exc)
        self._distrust()

    def _distrust(self) -> None:
        self.trusted = False
        self.generation += 1
        self._wake.set()

    async def _on_connect(self, conn: Connection) -> None:
        """Every new connection: learn which Valkey server lifetime this is."""
        await conn.on_connect()
        await conn.send_command("INFO", "server")
        info = await conn.read_response()
        text = info.decode() if isinstance(info, bytes) else str(info)
        run_id = next(
            (
                line.split(":", 1)[1].strip()
                for line in text.splitlines()
                if line.startswith("run_id:")
            ),
            None,
        )
        if isinstance(self.client, MirrorCluster):
            # Connections to the cluster's other nodes say nothing about the mirror's
            # server; the one that serves its slot answers a key command without MOVED.
            await conn.send_command("EXISTS", self._home_key)
            try:
                await conn.read_response()
            except ResponseError:
                return
        expected = self._seeded_run_id if self.trusted else self._seeding_run_id
        if expected is not None and run_id != expected:
            log.warning("valkey_restarted", run_id=run_id)
            self._distrust()

    async def current_run_id(self) -> str:
        """The run_id of the server holding the mirror (in cluster mode, of the primary
        that serves its slot)."""
        client = self.client
        if isinstance(client, MirrorCluster):
            await client.initialize()
            info = await client.info("server", target_nodes=client.owner(self._home_key))
        else:
            info = await client.info("server")
        return str(info["run_id"])

    # -- the probe ---------------------------------------------------------------

    async def ensure_seeded(self, reason: str) -> bool:
        """Probe and, when reachable, reseed. True when the mirror ends up trusted."""
        if not self.enabled:
            return False
        try:
            run_id = await self.current_run_id()
        except VALKEY_FAILURES as exc:
            self.last_failure = exc
            self.breaker.open()
            return False
        self.last_failure = None
        self.breaker.close()
        if self._seeder is None:
            return False
        generation = self.generation
        self._seeding_run_id = run_id
        try:
            await self._seeder(reason)
        except MirrorUnavailable:
            return False
        except ServiceUnavailable as exc:  # Postgres down, or busy past its bounds
            log.warning("mirror_seed_waiting_for_postgres", error=exc.code)
            return False
        finally:
            self._seeding_run_id = None
        # A failure or restart during the seed: the next round seeds again.
        if generation != self.generation or not self.reachable:
            return False
        self._seeded_run_id = run_id
        self.trusted = True
        log.info("valkey_mirror_trusted", reason=reason)
        return True

    async def _watch(self) -> None:
        while not self._closing:
            if not self.trusted:
                try:
                    await self.ensure_seeded("reconnect")
                except Exception:  # the watcher must never die
                    log.exception("mirror_watch_failed")
            self._wake.clear()
            try:  # not wait_for: on 3.11 it can swallow close()'s cancel and hang it
                async with asyncio.timeout(self.probe_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
