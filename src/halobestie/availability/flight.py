"""Single flight: concurrent callers of one piece of work in this instance share one run.

What the beacon uses so that a snapshot miss costs one lock attempt (and at most one
computation) per instance, however many customers poll at that moment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, Literal, TypedDict, TypeVar

T = TypeVar("T")

BeaconState = Literal["available", "busy", "offline"]


class Snapshot(TypedDict):
    """The beacon's answer (SPEC §4), as stored in Valkey (JSON) and served: `computed_at`
    ISO-8601 UTC."""

    state: BeaconState
    available_count: int
    computed_at: str


class SingleFlight(Generic[T]):
    """`await flight.run(work)`: starts `work` unless a run is in flight, and answers every
    caller with that run's result or exception. The run is a task of its own, so a caller
    that is cancelled (a client that hangs up) does not cancel it for the others."""

    def __init__(self) -> None:
        self._task: asyncio.Task[T] | None = None

    @property
    def in_flight(self) -> bool:
        return self._task is not None

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        task = self._task
        if task is None:
            task = asyncio.ensure_future(work())
            self._task = task
            task.add_done_callback(self._landed)
        return await asyncio.shield(task)

    def _landed(self, task: asyncio.Task[T]) -> None:
        if self._task is task:
            self._task = None
        # Retrieved here, so a run whose callers all went away logs no "never retrieved".
        if not task.cancelled():
            task.exception()


@dataclass
class BeaconLocal:
    """This instance's side of the shared beacon: its one flight on a snapshot miss, and
    how long its last computation took (seconds, monotonic), which sizes the lock lease.
    While Valkey is down: the in-process cache of the beacon, which protects Postgres
    from one aggregate per customer poll during an outage, (expires at, snapshot), and
    the lock under which one request recomputes it."""

    flight: SingleFlight[Snapshot] = field(default_factory=SingleFlight)
    compute_seconds: float | None = None
    fallback: tuple[datetime, Snapshot] | None = None
    fallback_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
