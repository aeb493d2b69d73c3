"""Startup hook: restore durable session timers before the mirror is seeded.

Startup order is fixed (SPEC §1): restore timers -> seed Valkey -> serve. Timers that
fell due while no instance was running fire during the restore, and every transition
they make recomputes capacity, so the seed that follows reads settled truth. The
sessions lifecycle registers its restorers here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from ..context import Context

Restorer = Callable[[Context, datetime], Awaitable[None]]
_restorers: list[Restorer] = []


def register_restorer(restorer: Restorer) -> None:
    if restorer not in _restorers:
        _restorers.append(restorer)


async def restore_timers(ctx: Context, now: datetime) -> int:
    """Run every registered restorer in registration order; returns how many ran."""
    for restorer in _restorers:
        await restorer(ctx, now)
    return len(_restorers)
