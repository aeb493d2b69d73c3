"""Write-through: re-derive mitras' mirror state from committed Postgres rows.

Called after every commit that changes a mitra (online, offline, deactivation, capacity).
It never applies a delta: it locks the mitras (see `locks.py`), reads their committed
state and capacity, and writes that whole state in one Lua call per mitra. Two writers
toggling the same mitra therefore leave Valkey equal to Postgres, whatever the order in
which their Valkey writes would otherwise have landed. Cost: three short Postgres
statements and a commit per write, on paths that are not hot (toggles, session
transitions).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ..aftercommit import AfterCommit
from ..clock import iso
from ..concepts import open_session
from ..context import Context
from ..db import RowModel
from ..logs import get_logger
from . import locks
from .ranked import epoch_ms
from .scripts import scripts

log = get_logger(__name__)

STATE_SQL = f"""
SELECT m.id, m.is_online, m.is_active, m.last_heartbeat_at, m.last_active_at,
       (SELECT count(*) FROM chat_sessions cs
         WHERE cs.mitra_id = m.id AND {open_session("cs.status")}) AS open_sessions
FROM mitras m
WHERE m.id = ANY($1::uuid[])
"""  # noqa: S608


@dataclass(frozen=True, slots=True)
class MitraState(RowModel):
    """A mitra's committed state as the mirror holds it (a row of STATE_SQL): UTC times,
    None for never; `open_sessions` counted from `chat_sessions`."""

    id: UUID
    is_online: bool
    is_active: bool
    last_heartbeat_at: datetime | None
    last_active_at: datetime | None
    open_sessions: int


async def sync_mitras(ctx: Context, mitra_ids: Sequence[UUID]) -> bool:
    """Mirror these mitras' committed state into Valkey. False when Valkey missed it
    (logged and counted by the mirror; the reseed after reconnect repairs it)."""
    if not mitra_ids or not ctx.mirror.reachable:
        if mitra_ids:
            ctx.metrics.valkey_errors.labels(operation="sync_mitras_skipped").inc()
        return False
    ids = list(mitra_ids)
    # Transaction-level locks, released by the commit (or by Postgres when the connection
    # dies): safe through a pooler in transaction mode, and a stalled writer is cut by
    # the idle-in-transaction bound. The transaction waits on Valkey once, for at most
    # VALKEY_OPERATION_TIMEOUT_SECONDS (below that bound).
    async with ctx.db.transaction() as conn:
        await conn.execute(locks.LOCK_MITRAS, locks.NAMESPACE, locks.SEED, ids)
        states = [MitraState.from_row(row) for row in await conn.fetch(STATE_SQL, ids)]
        return await ctx.mirror.write("sync_mitras", lambda _: _apply(ctx, states))


def mirror_mitras(ctx: Context, mitra_ids: Sequence[UUID]) -> AfterCommit:
    """`sync_mitras` as the effect of a committed write (aftercommit.py): a failure (the
    mitras' lock waited past DATABASE_LOCK_TIMEOUT_SECONDS, Postgres gone) is logged and
    counted there, and the reseed heals it."""
    ids = list(mitra_ids)

    async def mirror_mitras() -> None:
        await sync_mitras(ctx, ids)

    return mirror_mitras


async def recompute_capacity(ctx: Context, mitra_id: UUID) -> bool:
    """After any chat-session transition: COUNT(*) from Postgres, then SET. Never INCR."""
    return await sync_mitras(ctx, [mitra_id])


async def _apply(ctx: Context, states: Sequence[MitraState]) -> None:
    """One Lua call per mitra, all issued at once so the auto-pipeline sends them in one
    write (a Pipeline with a registered script asked SCRIPT EXISTS first: a second round
    trip inside the mitras' locks on every write-through)."""
    keys = ctx.keys
    max_sessions = str(ctx.settings.mitra_max_concurrent_sessions)

    def apply(state: MitraState) -> Awaitable[object]:
        mitra_id = str(state.id)
        heartbeat = state.last_heartbeat_at
        return ctx.mirror.batched.call(
            scripts(ctx).apply_mitra,
            [
                keys.online,
                keys.deactivated,
                keys.heartbeat(mitra_id),
                keys.capacity(mitra_id),
                keys.ranked,
            ],
            [
                mitra_id,
                "1" if state.is_online else "0",
                "1" if state.is_active else "0",
                iso(heartbeat) if heartbeat is not None else "",
                str(state.open_sessions),
                max_sessions,
                str(epoch_ms(state.last_active_at)),
            ],
        )

    await asyncio.gather(*(apply(state) for state in states))
