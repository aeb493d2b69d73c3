"""`admin.counts`: the overview pushed to the admins connected to this instance.

While at least one admin socket is open here, one task samples the overview (the same
`Overview` as GET /api/admin/overview) and sends it to those sockets when it changed, and
at least every KEEPALIVE_SECONDS (the chart's clock); never more than once per
MIN_INTERVAL_SECONDS, and never more often than COST_FACTOR times the sample's own cost,
so a slow computation (the pool at 100k online: ~0.2 s) spaces the samples out instead
of eating the instance. One computation per instance, whatever the number of admins
watching: no polling storm. With nobody watching, nothing runs.

Each instance samples for its own admins only (delivered locally, not through Valkey):
the overview describes the instance that computed it (its breaker, its fallback). The
samples are also kept (HISTORY_SAMPLES, about ten minutes) for the console's chart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter, deque
from typing import Any
from uuid import UUID

from ..context import Context
from ..events.bus import bus
from ..logs import get_logger
from .models import Overview, Sample
from .queries import overview

log = get_logger(__name__)

EVENT = "admin.counts"
MIN_INTERVAL_SECONDS = 1.0
KEEPALIVE_SECONDS = 5.0
COST_FACTOR = 5
HISTORY_SAMPLES = 600


def sample_of(view: Overview) -> Sample:
    sessions = view.sessions
    return Sample(
        at=view.sampled_at,
        online=view.mitras.online,
        available=view.mitras.available,
        busy=view.mitras.busy,
        deactivated=view.mitras.deactivated,
        pending_payment=sessions.pending_payment if sessions else None,
        active=sessions.active if sessions else None,
    )


def _comparable(view: Overview) -> dict[str, Any]:
    """What counts as a change: everything but the sampling and beacon times."""
    data = view.model_dump(mode="json", exclude={"sampled_at"})
    if data.get("beacon"):
        data["beacon"].pop("computed_at", None)
    return data


class AdminFeed:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.watchers: Counter[str] = Counter()  # admin user id -> open sockets here
        self.history: deque[Sample] = deque(maxlen=HISTORY_SAMPLES)
        self.latest: Overview | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def watch(self, user_id: UUID) -> None:
        """An admin socket opened on this instance (api/ws.py)."""
        self.watchers[str(user_id)] += 1
        self._wake.set()  # a new watcher gets a push at the next tick
        if (self._task is None or self._task.done()) and not self._stopping:
            self._task = asyncio.create_task(self._run(), name="admin-feed")

    def unwatch(self, user_id: UUID) -> None:
        key = str(user_id)
        self.watchers[key] -= 1
        if self.watchers[key] <= 0:
            del self.watchers[key]

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        pushed: dict[str, Any] | None = None
        pushed_at = 0.0
        while self.watchers and not self._stopping:
            started = time.monotonic()
            try:
                view = await overview(self.ctx, self.ctx.clock.now())
            except Exception:  # the feed must survive anything; the page falls back
                log.exception("admin_feed_failed")
                view = None
            cost = time.monotonic() - started
            fresh = self._wake.is_set()
            self._wake.clear()
            if view is not None:
                self.latest = view
                self.history.append(sample_of(view))
                comparable = _comparable(view)
                due = time.monotonic() - pushed_at >= KEEPALIVE_SECONDS
                if fresh or due or comparable != pushed:
                    text = json.dumps({"type": EVENT, "data": view.model_dump(mode="json")})
                    await bus(self.ctx).deliver_local(list(self.watchers), text)
                    pushed, pushed_at = comparable, time.monotonic()
            await asyncio.sleep(max(MIN_INTERVAL_SECONDS, COST_FACTOR * cost))
