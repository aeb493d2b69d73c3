"""The Valkey side of the mirror: client, breaker, trust, reconnect detection.

Two flags, on purpose:
- `reachable` (the breaker): may we send commands at all? Opened by the first failed
  operation, so an outage costs one timeout, not one per request; closed again only by
  the background probe.
- `trusted`: may readers believe what Valkey says? False until a seed has run against
  the *current* Valkey server. A restart (new `run_id`) or any failure clears it, and
  only a completed reseed sets it again.

Writers need only `reachable`: they re-derive state from Postgres under a lock (see
`sync.py`), so a write that lands while untrusted is still right, and a write skipped
while unreachable happens-before the reseed that closes the gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import valkey.asyncio as valkey_async
from valkey.asyncio.connection import Connection
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError
from valkey.exceptions import ValkeyError
from valkey.retry import Retry
from valkey.utils import LIBVALKEY_AVAILABLE

from ..errors import MirrorUnavailable, ServiceUnavailable
from ..logs import get_logger
from ..metrics import Metrics
from .autopipe import AutoPipeline

log = get_logger(__name__)

T = TypeVar("T")
# valkey-py shares its command stubs between the sync and asyncio clients, so every
# async command is typed `Awaitable[T] | T`; typing the client as Any at this one
# boundary is cheaper than a cast at every call site.
Client: TypeAlias = Any
# Everything a dead or slow Valkey can raise through valkey-py.
VALKEY_FAILURES: tuple[type[BaseException], ...] = (ValkeyError, OSError, asyncio.TimeoutError)


class _CPackedCommands:
    """valkey-py's asyncio connections pack every command in Python, re-joining a growing
    buffer per argument; its sync client packs with libvalkey's C packer instead. Same
    bytes on the wire; measured here, an MGET of 1,000 keys packs in 71 us instead of
    528 us (find-available sends two per 1,000 online mitras) and the heartbeat's EVALSHA
    in 1 us instead of 4. Mixed into whatever connection class the URL picks (TCP, TLS,
    unix socket)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return _SERIALIZER.pack(*args)


if LIBVALKEY_AVAILABLE:
    from valkey.connection import LibvalkeyRespSerializer

    _SERIALIZER = LibvalkeyRespSerializer()


def _pack_in_c(client: valkey_async.Valkey) -> None:
    pool = client.connection_pool
    base = pool.connection_class
    if LIBVALKEY_AVAILABLE and not issubclass(base, _CPackedCommands):
        pool.connection_class = type(f"CPacked{base.__name__}", (_CPackedCommands, base), {})


class Mirror:
    def __init__(
        self,
        url: str,
        metrics: Metrics,
        *,
        operation_timeout: float,
        probe_interval: float,
        enabled: bool = True,
    ) -> None:
        self.metrics = metrics
        self.probe_interval = probe_interval
        # Disabled = the design before the mirror (every read and heartbeat on Postgres);
        # kept runnable so benchmarks can measure both in one run.
        self.enabled = enabled
        self.reachable = enabled
        self.trusted = False
        # Bumped on every event that invalidates what a reader may have just read.
        self.generation = 0
        self._seeded_run_id: str | None = None
        self._seeding_run_id: str | None = None
        self._seeder: Callable[[str], Awaitable[Any]] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.client = self._connect(url, operation_timeout, per_read_timeout=True)
        # The heartbeat's Lua call, the beacon's GET and the write-through's Lua calls are
        # auto-pipelined (autopipe.py) over their own connections, which time out per
        # batch, not per reply: valkey-py arms an asyncio timer for every reply it reads,
        # measured at 9 % of a heartbeat's CPU.
        self.batched = AutoPipeline(
            self._connect(url, operation_timeout, per_read_timeout=False),
            timeout=operation_timeout,
        )

    def _connect(
        self, url: str, operation_timeout: float, *, per_read_timeout: bool
    ) -> valkey_async.Valkey:
        client: valkey_async.Valkey = valkey_async.Valkey.from_url(
            url,
            decode_responses=True,
            socket_timeout=operation_timeout if per_read_timeout else None,
            socket_connect_timeout=operation_timeout,
            # One quick retry absorbs a single dropped connection; a restart is still
            # noticed because every new connection reports the server's run_id.
            retry=Retry(NoBackoff(), 1),
            retry_on_error=[ValkeyConnectionError, ValkeyTimeoutError],
            valkey_connect_func=self._on_connect,
            health_check_interval=0,
        )
        _pack_in_c(client)  # before the first connection is made
        return client

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
                self.metrics.valkey_errors.labels(operation=f"{name}_skipped").inc()
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
        self.metrics.valkey_errors.labels(operation=name).inc()
        if self.reachable:
            log.warning("valkey_unreachable", operation=name, error=repr(exc))
        self.reachable = False
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
        expected = self._seeded_run_id if self.trusted else self._seeding_run_id
        if expected is not None and run_id != expected:
            log.warning("valkey_restarted", run_id=run_id)
            self._distrust()

    async def current_run_id(self) -> str:
        info = await self.client.info("server")
        return str(info["run_id"])

    # -- the probe ---------------------------------------------------------------

    async def ensure_seeded(self, reason: str) -> bool:
        """Probe and, when reachable, reseed. True when the mirror ends up trusted."""
        if not self.enabled:
            return False
        try:
            run_id = await self.current_run_id()
        except VALKEY_FAILURES:
            self.reachable = False
            return False
        self.reachable = True
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
