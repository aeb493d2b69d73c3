"""What one chat message costs the database: Postgres statements per message sent and
delivered, counted from Postgres' own log (`pgstats.py`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .chat_sessions import Pair, chat_env, drain, open_socket, receive, send_request, ws_url
from .infra import Procs, Servers
from .loadgen import HttpClient
from .pgstats import StatementLog, logging_dsn

DRAIN_SECONDS = 15.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def statements_per_send(
    servers: Servers, procs: Procs, pair: Pair, count: int = 50
) -> dict[str, Any]:
    """Postgres statements per message, counted from Postgres' log (`pgstats.py`): a
    third app whose connections log every statement holds both parties' sockets, and
    `count` sends go through it one after the other, each delivered before the window
    closes. Everything the app runs in the window counts (its socket re-check of logins,
    every WS_LOGIN_RECHECK_SECONDS, included)."""
    if servers.pg_log is None:
        return {"skipped": "needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()
    dsn = logging_dsn(servers.database_url, "bench-chat-counted")
    proc = procs.engine("chat-counted", chat_env(servers, "counted", dsn))
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    statuses: dict[str, int] = {}
    client = HttpClient(proc.base)
    mine, _ = await open_socket(ws_url(proc, pair.customer.token))
    theirs, _ = await open_socket(ws_url(proc, pair.mitra.token))
    readers = [asyncio.create_task(drain(mine)), asyncio.create_task(receive(theirs, sent, got))]
    try:
        await client.request("GET", "/healthz")

        async def sends() -> None:
            for k in range(count):
                cid = f"counted-{k}"
                sent[cid] = time.perf_counter()
                status, _ = await client.send(send_request(pair, cid))
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            until = time.perf_counter() + DRAIN_SECONDS
            while len(got) < len(sent) and time.perf_counter() < until:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

        counted = await stmt_log.during(sends)
    finally:
        for task in readers:
            task.cancel()
        await mine.close()
        await theirs.close()
        await asyncio.gather(*readers, return_exceptions=True)
        await client.close()
        procs.stop(proc)
        await stmt_log.close()
    kinds = {k: round(v / count, 2) for k, v in counted.kinds().items()}
    per_send = counted.count / count
    log(f"statements per send: {per_send:.2f} {statuses} {kinds}")
    return {
        "sends": count,
        "delivered": len(got),
        "statuses": statuses,
        "per_send": per_send,
        "kinds_per_send": kinds,
    }
