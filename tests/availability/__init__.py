"""Availability engine tests: seed, write-through, readers, beacon, sweeps, drift,
concurrency. Shared helpers for rows written straight into Postgres (as another system
or an operator would), metric reads, and fault-proxy URLs for the test servers."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg

from halobestie.context import Context
from tests.conftest import Servers
from tests.support.proxy import Target

_serial = 0


async def insert_mitra(
    pg: asyncpg.Connection,
    *,
    online: bool = False,
    active: bool = True,
    heartbeat: datetime | None = None,
) -> str:
    """A mitra row written directly in Postgres; returns its id as text."""
    global _serial
    _serial += 1
    mitra_id = await pg.fetchval(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ($1, 'x', $2, 'mitra') RETURNING id",
        f"direct-mitra-{_serial}@example.com",
        f"Direct Mitra {_serial}",
    )
    await pg.execute(
        "INSERT INTO mitras (id, is_online, is_active, last_heartbeat_at) VALUES ($1, $2, $3, $4)",
        mitra_id,
        online,
        active,
        heartbeat,
    )
    return str(mitra_id)


async def insert_customer(pg: asyncpg.Connection) -> UUID:
    global _serial
    _serial += 1
    customer_id: UUID = await pg.fetchval(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ($1, 'x', $2, 'customer') RETURNING id",
        f"direct-customer-{_serial}@example.com",
        f"Direct Customer {_serial}",
    )
    return customer_id


async def insert_session(
    pg: asyncpg.Connection, customer_id: UUID, mitra_id: UUID | str, status: str
) -> UUID:
    session_id: UUID = await pg.fetchval(
        "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes)"
        " VALUES ($1, $2, $3, 30) RETURNING id",
        customer_id,
        UUID(str(mitra_id)),
        status,
    )
    return session_id


async def open_sessions(pg: asyncpg.Connection, mitra_id: UUID | str) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM chat_sessions"
        " WHERE mitra_id = $1 AND status IN ('active', 'pending_payment')",
        UUID(str(mitra_id)),
    )
    return count


def metric(ctx: Context, name: str, **labels: str) -> float:
    """One sample of this instance's registry (0 when never incremented)."""
    return ctx.metrics.registry.get_sample_value(name, labels) or 0.0


def metric_total(ctx: Context, name: str) -> float:
    """A counter summed over all its label values."""
    total = 0.0
    for family in ctx.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


def valkey_target(servers: Servers) -> tuple[str, int]:
    parts = urlsplit(servers.valkey_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def valkey_url_via(servers: Servers, port: int) -> str:
    parts = urlsplit(servers.valkey_url)
    return urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, "", ""))


def postgres_target(servers: Servers) -> Target:
    if servers.postgres is not None:
        return servers.postgres.socket_path  # pgserver listens on a unix socket only
    parts = urlsplit(servers.database_url)
    return parts.hostname or "127.0.0.1", parts.port or 5432


def postgres_url_via(servers: Servers, port: int) -> str:
    parts = urlsplit(servers.database_url)
    user = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else "postgres"
    return urlunsplit((parts.scheme, f"{user}@127.0.0.1:{port}", parts.path, "", ""))


NO_DIFFERENCES: dict[str, Any] = {
    "online": {"missing": [], "extra": []},
    "deactivated": {"missing": [], "extra": []},
    "capacity": {},
    "heartbeat": {},
    "ranked": {"missing": [], "extra": [], "score": {}},
}


async def members(valkey: Any, key: str) -> set[str]:
    """SMEMBERS as a set (valkey-py returns a list)."""
    return set(await valkey.smembers(key))
