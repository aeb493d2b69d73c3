"""Announcing a change: its events recorded in its transaction, delivered after commit.

A write builds `announce(...)` effects (or effects that carry events, like
`sessions.transitions.session_changed`) while its transaction is open, then, as the
transaction's last statement, `await record_effects(conn, now, effects)` numbers and
stores every event of every such effect in one statement (events/log.py: one lock order
for all recipients); after commit `aftercommit.run_after_commit` runs the effects, and
each delivers its recorded events (`EventBus.deliver_frames`: this instance's sockets,
then the other instances over pub/sub). A timer handler's effects are recorded by
`recording(handler)`, the wrapper the runtime puts around every handler.

An effect run without having been recorded is a bug (its events would be live-only and
missing from every replay): it raises, and run_after_commit logs and counts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from ..aftercommit import AfterCommit
from ..context import Context
from ..timers import Handler
from .bus import bus
from .log import Pending, Recorded, record_each


class Announce:
    """An after-commit effect delivering events recorded in its transaction, after its
    optional `before` effect (e.g. the mirror's write-through) whether that failed or
    not. Its metric label (aftercommit.effect_name) is `name`."""

    def __init__(
        self,
        ctx: Context,
        events: Iterable[Pending],
        *,
        name: str,
        before: AfterCommit | None = None,
    ) -> None:
        self.ctx = ctx
        self.events: list[Pending] = [(list(users), t, d) for users, t, d in events]
        self.before = before
        self.recorded: list[Recorded] | None = None
        self.__qualname__ = name

    async def __call__(self) -> None:
        try:
            if self.before is not None:
                await self.before()
        finally:
            if self.recorded is None:
                types = sorted({t for _, t, _ in self.events})
                raise RuntimeError(f"events {types} were never recorded in their transaction")
            await bus(self.ctx).deliver_frames(
                [(str(r.user_id), r.seq, r.frame) for r in self.recorded]
            )


def announce(
    ctx: Context, users: Iterable[UUID], type_: str, data: dict[str, Any], *, name: str = "publish"
) -> Announce:
    """One event for these users, to record with `record_effects` before commit."""
    return Announce(ctx, [(list(users), type_, data)], name=name)


async def record_effects(conn: Any, now: datetime, effects: Iterable[AfterCommit]) -> None:
    """Inside the transaction, as its last statement: record the events of every
    `Announce` among `effects` not yet recorded (one statement for all of them; none
    when there is nothing to record)."""
    pending = [e for e in effects if isinstance(e, Announce) and e.recorded is None]
    if not pending:
        return
    flat = [event for effect in pending for event in effect.events]
    per_event = await record_each(conn, now, flat)
    start = 0
    for effect in pending:
        taken = per_event[start : start + len(effect.events)]
        effect.recorded = [r for rs in taken for r in rs]
        start += len(effect.events)


def recording(handler: Handler) -> Handler:
    """A timer handler whose effects' events are recorded in the firing transaction,
    right after the handler (the runner then only marks the timer row fired)."""

    async def fire(ctx: Context, conn: Any, ref_id: UUID, now: datetime) -> list[AfterCommit]:
        effects = await handler(ctx, conn, ref_id, now)
        await record_effects(conn, now, effects)
        return effects

    fire.__name__ = fire.__qualname__ = getattr(handler, "__name__", "handler")
    return fire
