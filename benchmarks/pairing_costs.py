"""What one pairing open costs (issue 8): Postgres statements per open, counted from
Postgres' log as the harness counts the heartbeat's (`pgstats.py`), and the blast's choice
alone, in-process, Valkey path against Postgres-only path."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from halobestie.availability.ranked import offerable, pick_from_index, window_from_postgres
from halobestie.pairing.queries import last_offered
from halobestie.pairing.ranking import Contender, rank

from . import inproc
from .infra import Proc
from .inproc import Harness
from .loadgen import HttpClient
from .pairing_scale import BODY, OPEN, Customers, wait_trusted
from .pgstats import Counted, StatementLog


async def count_opens(
    during: Callable[[Callable[[], Awaitable[Any]]], Awaitable[Counted]],
    base: str,
    customers: Customers,
    count: int,
) -> dict[str, Any]:
    """Postgres statements for `count` opens by as many customers, one after the other
    (the cancels come after the counted window)."""
    pairs = customers.pairs[:count]
    opened: list[tuple[str, str]] = []
    statuses: dict[str, int] = {}
    client = HttpClient(base)
    try:

        async def opens() -> None:
            for _, token in pairs:
                status, body = await client.request(
                    "POST", OPEN, {"Authorization": f"Bearer {token}"}, BODY
                )
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 201:
                    opened.append((token, body["pairing_request"]["id"]))

        await client.request("GET", "/healthz")
        counted = await during(opens)
        for token, request_id in opened:
            await client.request(
                "DELETE", f"{OPEN}/{request_id}", {"Authorization": f"Bearer {token}"}
            )
    finally:
        await client.close()
    return {
        "opens": len(pairs),
        "statuses": statuses,
        "statements": counted.count,
        "per_open": counted.count / max(1, len(pairs)),
        "kinds": counted.kinds(),
    }


async def statements_per_open(
    stmt_log: StatementLog,
    start: Callable[[str], Awaitable[Proc]],
    stop: Callable[[Proc], None],
    names: list[str],
    customers: Customers,
    count: int,
) -> dict[str, Any]:
    """For each name: `start(name)` gives an app process whose connections log every
    statement (`pgstats.logging_dsn`); `count` opens through it are counted."""
    out: dict[str, Any] = {}
    for name in names:
        proc = await start(name)
        try:
            waited = await wait_trusted(proc.base) if name.endswith("valkey") else 0.0
            out[name] = await count_opens(stmt_log.during, proc.base, customers, count)
            out[name]["waited_for_trusted_mirror_s"] = round(waited, 2)
            out[name]["started_degraded"] = name.endswith("valkey") and (
                "starting_degraded" in proc.tail()
            )
        finally:
            stop(proc)
    return out


async def choose_inprocess(h: Harness, iterations: int) -> dict[str, Any]:
    """The blast's choice alone, in-process, the two paths interleaved call by call: the
    Valkey path (one `pick_offers.lua` call, then Postgres' word on those few by primary
    key) and the Postgres-only path (the LIMITed index walk, the candidates' latest
    offers, the ranking, the same primary-key check). Both take turns as opens do.
    Medians in ms; without HTTP, the transaction's writes and the machine's other
    requests, so that a growth with the pool would show here first."""
    ctx = h.ctx
    fanout = ctx.settings.pairing_fanout
    valkey_ms: list[float] = []
    pg_ms: list[float] = []
    async with ctx.db.connection() as conn:

        async def from_valkey() -> list[str]:
            picked = await pick_from_index(ctx, fanout=fanout, exclude=[], now=inproc.now())
            allowed = await offerable(ctx, conn, picked)
            return [m for m in picked if m in allowed]

        async def from_postgres() -> list[str]:
            now = inproc.now()
            window = await window_from_postgres(ctx, conn, fanout=fanout, exclude=[], now=now)
            offered = await last_offered(conn, [c.mitra_id for c in window])
            contenders = [
                Contender(
                    c.mitra_id, c.load, max_or_none(c.last_active_at, offered.get(c.mitra_id))
                )
                for c in window
            ]
            picked = rank(contenders, fanout)
            allowed = await offerable(ctx, conn, picked)
            return [m for m in picked if m in allowed]

        await from_valkey()
        await from_postgres()
        for _ in range(iterations):
            for fn, out in ((from_valkey, valkey_ms), (from_postgres, pg_ms)):
                started = time.perf_counter()
                chosen = await fn()
                out.append((time.perf_counter() - started) * 1000)
                if len(chosen) != fanout:
                    raise RuntimeError(f"the choice found {len(chosen)} of {fanout} mitras")
    return {"valkey": inproc.summary(valkey_ms), "postgres": inproc.summary(pg_ms)}


def max_or_none(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)
