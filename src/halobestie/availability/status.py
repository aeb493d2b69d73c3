"""Per-mitra views for the admin list and the mitra's own status page (Postgres)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from ..clock import iso, parse_iso
from ..concepts import open_session
from ..context import Context
from ..errors import MirrorUnavailable, NotFound


@dataclass(frozen=True)
class MitraView:
    id: UUID
    email: str
    display_name: str
    is_online: bool
    is_active: bool
    last_heartbeat_at: datetime | None
    active_sessions: int

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "display_name": self.display_name,
            "is_online": self.is_online,
            "is_active": self.is_active,
            "last_heartbeat_at": iso(self.last_heartbeat_at) if self.last_heartbeat_at else None,
            "active_sessions": self.active_sessions,
        }


# `active_sessions`: the contract's name (SPEC §4) for the mitra's open sessions.
VIEW_SQL = f"""
SELECT m.id, u.email, u.display_name, m.is_online, m.is_active, m.last_heartbeat_at,
       (SELECT count(*) FROM chat_sessions cs
         WHERE cs.mitra_id = m.id AND {open_session("cs.status")})
         AS active_sessions
FROM mitras m JOIN users u ON u.id = m.id
"""  # noqa: S608


def _view(row: Any) -> MitraView:
    return MitraView(**dict(row))


async def get_mitra_view(ctx: Context, mitra_id: UUID) -> MitraView:
    """The mitra as Postgres has it now. NotFound for an unknown mitra."""
    async with ctx.db.connection() as conn:
        return await read_mitra_view(conn, mitra_id)


async def read_mitra_view(conn: asyncpg.Connection, mitra_id: UUID) -> MitraView:
    """The mitra as `conn` sees it: inside a transaction that changed the mitra, its own
    change (an admin's answer reflects their write, not a racing one). NotFound."""
    row = await conn.fetchrow(VIEW_SQL + " WHERE m.id = $1", mitra_id)
    if row is None:
        raise NotFound(f"no mitra with id {mitra_id}")
    return _view(row)


async def list_mitra_views(ctx: Context) -> list[MitraView]:
    async with ctx.db.connection() as conn:
        rows = await conn.fetch(VIEW_SQL + " ORDER BY u.created_at, m.id")
    return [_view(r) for r in rows]


async def overlay_heartbeats(ctx: Context, views: list[MitraView]) -> list[MitraView]:
    """Postgres' last_heartbeat_at lags Valkey by up to one write-back cycle: show the
    newer of the two. Best effort: without Valkey, Postgres' value stands."""
    online = [v for v in views if v.is_online]
    if not online:
        return views
    try:
        values = await ctx.mirror.read(
            "status_heartbeats", lambda c: c.mget([ctx.keys.heartbeat(v.id) for v in online])
        )
    except MirrorUnavailable:
        return views
    seen = {v.id: parse_iso(t) for v, t in zip(online, values, strict=True) if t is not None}
    return [
        replace(v, last_heartbeat_at=max(seen[v.id], v.last_heartbeat_at or seen[v.id]))
        if v.id in seen
        else v
        for v in views
    ]
