"""Writes of the availability engine: Postgres commits first, then the mirror follows as
an after-commit effect (aftercommit.py: best effort, logged and counted, never failing
the request)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from ..aftercommit import run_after_commit
from ..clock import iso
from ..context import Context
from ..errors import MirrorUnavailable, MitraDeactivated, NotFound, NotOnline
from .scripts import scripts
from .sync import mirror_mitras


async def _explain_refusal(ctx: Context, mitra_id: UUID) -> None:
    """An UPDATE matched no row: say why, naming the culprit."""
    async with ctx.db.connection() as c:
        row = await c.fetchrow("SELECT is_active, is_online FROM mitras WHERE id = $1", mitra_id)
    if row is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    if not row["is_active"]:
        raise MitraDeactivated(f"mitra {mitra_id} is deactivated")
    if not row["is_online"]:
        raise NotOnline(f"mitra {mitra_id} is not online; go online first")


async def do_go_online(ctx: Context, mitra_id: UUID, now: datetime) -> None:
    """Online, with a fresh heartbeat in Postgres too (the fallback judges from it)."""
    async with ctx.db.connection() as conn:
        updated = await conn.fetchval(
            """
            UPDATE mitras SET is_online = true,
                   last_heartbeat_at = GREATEST(last_heartbeat_at, $2),
                   status_changed_at = $2
            WHERE id = $1 AND is_active RETURNING id
            """,
            mitra_id,
            now,
        )
    if updated is None:
        try:
            await _explain_refusal(ctx, mitra_id)
        except NotOnline:
            # Deactivated when the UPDATE ran, reactivated since: still that refusal
            # (not "go online first", which makes no sense on this endpoint).
            raise MitraDeactivated(f"mitra {mitra_id} is deactivated") from None
    await run_after_commit(ctx, [mirror_mitras(ctx, [mitra_id])])


async def do_go_offline(ctx: Context, mitra_id: UUID, now: datetime) -> None:
    async with ctx.db.connection() as conn:
        updated = await conn.fetchval(
            """
            UPDATE mitras SET is_online = false,
                   status_changed_at = CASE WHEN is_online THEN $2 ELSE status_changed_at END
            WHERE id = $1 RETURNING id
            """,
            mitra_id,
            now,
        )
    if updated is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    await run_after_commit(ctx, [mirror_mitras(ctx, [mitra_id])])


@dataclass(frozen=True)
class HeartbeatResult:
    at: datetime
    at_iso: str  # `at` as written to Valkey (formatted once: this is the hot path)
    source: str  # "valkey" on the hot path, "postgres" during a Valkey outage


HEARTBEAT_FALLBACK_SQL = """
UPDATE mitras SET last_heartbeat_at = GREATEST(last_heartbeat_at, $2)
WHERE id = $1 AND is_active AND is_online
RETURNING id
"""


async def do_record_heartbeat(ctx: Context, mitra_id: UUID, now: datetime) -> HeartbeatResult:
    """The hot path: one Lua call in Valkey (guard + write), zero Postgres statements.

    While the mirror is unusable: a full Postgres check of the mitra (a deactivated
    mitra is refused during an outage too) and the heartbeat written straight into
    `last_heartbeat_at`, so the Postgres fallback keeps judging freshness correctly.
    """
    keys = ctx.keys
    key_id = str(mitra_id)
    stamp = iso(now)
    try:
        outcome = await ctx.mirror.read(
            "heartbeat",
            lambda c: ctx.mirror.batched.call(
                scripts(ctx).heartbeat,
                [keys.deactivated, keys.online, keys.heartbeat(key_id)],
                [key_id, stamp],
            ),
        )
    except MirrorUnavailable:
        ctx.metrics.fallback_reads.labels(reader="heartbeat").inc()
        for _ in range(2):
            async with ctx.db.connection() as conn:
                if await conn.fetchval(HEARTBEAT_FALLBACK_SQL, mitra_id, now) is not None:
                    return HeartbeatResult(now, stamp, "postgres")
            # Raises with the reason; returns only if the mitra went (back) online
            # between the UPDATE and this check, and then the UPDATE is worth a retry.
            await _explain_refusal(ctx, mitra_id)
        raise NotOnline(f"mitra {mitra_id} is changing status; retry the heartbeat") from None
    if outcome == -1:
        raise MitraDeactivated(f"mitra {mitra_id} is deactivated")
    if outcome == 0:
        raise NotOnline(f"mitra {mitra_id} is not online; go online first")
    return HeartbeatResult(now, stamp, "valkey")
