"""One socket's event stream: recorded events in `seq` order, each exactly once.

Events of one user reach a socket from several paths: this instance's own deliveries,
other instances' over pub/sub (two instances' deliveries can cross, and pub/sub loses
messages while Valkey is away), the catch-up (events/bus.py) and the replay of `since`.
A `Sequencer` sits between all of them and the socket's outbox. It knows the last seq it
sent (`last`) and:

* drops a seq at or below `last` (a duplicate), sends `last + 1` at once, keeps a seq
  further ahead (`pending`) until the ones before it are there;
* with a hole before a pending seq (a delivery still on its way, or lost), waits
  GAP_GRACE_SECONDS for it, then reads the hole from Postgres. Everything in it is
  committed and readable (events/log.py: a committed seq n implies every seq below n
  committed), so the read is exact;
* `catch_up(n)`: the user's log reached n (the bus read it); a socket behind reads
  `(last, n]` from Postgres at once;
* `start(last, target)`: until started it only keeps what it is offered (the socket
  attaches to the bus before `ready` is sent, so nothing published meanwhile is lost);
  started, it replays `(last, target]` from Postgres in pages, then drains what it kept.

Reads go out in pages of PAGE events through the outbox's waiting put (a replay of
thousands never overflows the outbox); while a read runs, offered events are kept, never
sent ahead of it. A read whose events expired meanwhile sends `resync_required` and
goes on from there. Postgres unreachable during a read: `fail` closes the socket (the
client reconnects with `since`); nothing is ever sent out of order.

Cost: nothing for events that arrive in order; one primary-key range read per hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from uuid import UUID

from ..db import Database
from ..errors import ServiceUnavailable
from ..logs import get_logger
from ..metrics import Metrics
from .log import read_range

log = get_logger(__name__)

PAGE = 500
# How long a hole may wait for its event to arrive by itself (another instance's
# delivery crossing ours) before it is read from Postgres.
GAP_GRACE_SECONDS = 0.05
# Events kept out of order (or during a read) before the socket counts as not keeping
# up; the outbox's own bound (api/ws.py) covers what was sent but not yet written.
PENDING_LIMIT = 1000


class TooFarBehind(Exception):
    """More than PENDING_LIMIT events are waiting on one socket."""


def resync_frame(last_seq: int) -> str:
    return json.dumps({"type": "resync_required", "data": {"last_seq": last_seq}})


class Sequencer:
    def __init__(
        self,
        db: Database,
        user_id: UUID,
        *,
        put: Callable[[str], None],
        put_wait: Callable[[str], Awaitable[None]],
        fail: Callable[[str], None],
        metrics: Metrics | None = None,
    ) -> None:
        """`put` enqueues a frame without waiting (raises when the outbox is full),
        `put_wait` waits for room; `fail(reason)` closes the socket (1013); `metrics`
        counts the reads (halobestie_event_log_reads_total)."""
        self.db = db
        self.metrics = metrics
        self.user_id = user_id
        self._put = put
        self._put_wait = put_wait
        self._fail = fail
        self.last: int | None = None  # None until started (or anchored)
        self._started = False
        self._target = 0  # the user's log is known to reach this
        self._pending: dict[int, str] = {}
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reads = 0

    # -- inputs ------------------------------------------------------------------

    def offer(self, seq: int, text: str) -> None:
        """A recorded event for this socket; never blocks. Raises TooFarBehind, or the
        outbox's own error when it is full."""
        if self.last is not None and seq <= self.last:
            return  # a duplicate
        if self._started and self.last is None:
            self.last = seq - 1  # anchored on the first live event (no position known)
        self._pending[seq] = text
        self._target = max(self._target, seq)
        if len(self._pending) > PENDING_LIMIT:
            raise TooFarBehind(f"{len(self._pending)} events waiting")
        self._arrived.set()
        if self._task is None and self._started:
            self._drain()

    def catch_up(self, last_seq: int) -> None:
        """The user's log reached `last_seq`: read what this socket lacks."""
        if last_seq > self._target:
            self._target = last_seq
        if self._task is None and self._started and self._behind():
            self._spawn(grace=False)

    def start(self, last: int | None, target: int | None = None) -> None:
        """Begin sending: after `last` (None: from the first event offered), replaying
        from Postgres up to `target` first."""
        self.last = last
        self._started = True
        if last is None and self._pending:
            self.last = min(self._pending) - 1
        if target is not None:
            self._target = max(self._target, target)
        if self.last is None:
            return  # anchored by the first event offered
        if self._behind():
            self._spawn(grace=False)
        else:
            self._drain()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- sending -----------------------------------------------------------------

    def _behind(self) -> bool:
        return self.last is not None and self._target > self.last

    def _drain(self) -> None:
        """Send what follows `last` without waiting; a hole left starts a read."""
        assert self.last is not None
        while (text := self._pending.pop(self.last + 1, None)) is not None:
            self._put(text)
            self.last += 1
        self._pending = {s: t for s, t in self._pending.items() if s > self.last}
        if self._behind():
            self._spawn(grace=True)

    def _spawn(self, *, grace: bool) -> None:
        self._task = asyncio.create_task(self._fill(grace), name=f"events-fill-{self.user_id}")

    async def _fill(self, grace: bool) -> None:
        """Until nothing is missing: wait out a short hole, then read it (in pages) and
        send it with what was kept, in order."""
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + (GAP_GRACE_SECONDS if grace else 0.0)
            while True:
                await self._send_kept()
                if not self._behind():
                    return
                if self._pending and loop.time() < deadline:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(deadline - loop.time()):
                            await self._arrived.wait()
                    continue
                await self._read()
        except ServiceUnavailable as exc:
            log.warning("events_read_failed", user_id=str(self.user_id), error=exc.code)
            self._fail(f"events_unavailable: {exc.code}; reconnect with since")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: never leave the socket silently stuck
            log.exception("events_fill_failed", user_id=str(self.user_id))
            self._fail(f"events_unavailable: {type(exc).__name__}")
        finally:
            if self._task is asyncio.current_task():
                self._task = None

    async def _send_kept(self) -> None:
        assert self.last is not None
        while (text := self._pending.pop(self.last + 1, None)) is not None:
            await self._put_wait(text)
            self.last += 1
        self._pending = {s: t for s, t in self._pending.items() if s > self.last}

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.event_log_reads.labels(reason=reason).inc()

    async def _read(self) -> None:
        """One page of the first hole `(last, upto]` from Postgres, sent in order."""
        assert self.last is not None
        upto = min(self._pending) - 1 if self._pending else self._target
        self._count("hole" if self._pending else "behind")
        async with self.db.connection() as conn:
            rows = await read_range(conn, self.user_id, self.last, upto, PAGE)
        self.reads += 1
        if not rows or rows[0].seq != self.last + 1:
            self._count("resync")
            # Expired meanwhile (the retention sweep): say so, go on after the hole.
            await self._put_wait(resync_frame(upto))
            self.last = upto
            return
        for row in rows:
            if row.seq != self.last + 1:
                break
            await self._put_wait(row.frame)
            self.last = row.seq
