"""After commit: the one rule for the work that follows a committed write.

Every write commits its Postgres transaction first. What follows the commit is an
*effect*, a no-argument coroutine function run by `run_after_commit` once the transaction
is over, never inside it (it would hold the transaction's locks while it talks to
Valkey): the mirror's write-through (a mitra's state and capacity re-derived from
Postgres into Valkey), the events that tell the parties, both of them for a chat-session
change (`sessions.transitions.session_changed`). Actions, timer handlers and sweeps all
hand their effects to `run_after_commit`; none awaits an effect itself.

When an effect fails (Valkey gone, which the mirror also counts as its own miss;
Postgres busy past a bound, e.g. the write-through's advisory lock waiting past
DATABASE_LOCK_TIMEOUT_SECONDS; a bug), the write still happened, so:

- the caller answers as it does for success: never a 5xx for a committed write;
- the failure is logged (`after_commit_failed`, with the effect's name and the error)
  and counted (`halobestie_after_commit_failures_total{effect}`);
- the effects after it still run;
- what it left behind heals by itself: the reseed after a Valkey reconnect and the
  reseed sweep (VALKEY_ONLINE_MIRROR_SWEEP_SECONDS) rewrite every mitra from Postgres,
  and the next change of that mitra writes it through again; a missed event is a hint,
  and clients refetch state over REST (and after every WebSocket reconnect).

A cancel (the client hung up, shutdown) is not a failure: it propagates.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from .context import Context
from .errors import DomainError
from .logs import get_logger

log = get_logger(__name__)

AfterCommit = Callable[[], Awaitable[None]]


def effect_name(effect: AfterCommit) -> str:
    """The metric label of an effect: the function that made it (`publish`,
    `session_changed`, `mirror_mitras`), read from its qualified name."""
    qualname = getattr(effect, "__qualname__", type(effect).__name__)
    return str(qualname).split(".<locals>", 1)[0].rsplit(".", 1)[-1]


async def run_after_commit(ctx: Context, effects: Iterable[AfterCommit]) -> int:
    """Run each effect in order, after the commit; returns how many failed (each logged
    and counted, never raised: module docstring)."""
    failed = 0
    for effect in effects:
        try:
            await effect()
        except Exception as exc:
            failed += 1
            name = effect_name(effect)
            ctx.metrics.after_commit_failures.labels(effect=name).inc()
            if isinstance(exc, DomainError):  # Postgres busy or gone: expected, no trace
                log.warning("after_commit_failed", effect=name, error=exc.code)
            else:
                log.exception("after_commit_failed", effect=name)
    return failed
