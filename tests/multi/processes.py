"""`halobestie serve` as real child processes (what `kill -9` needs), and the timer rows
the multi-instance tests schedule and inspect."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx

from halobestie.timers import schedule_timer
from tests.conftest import TEST_JWT_SECRET, TEST_WEBHOOK_SECRET, Servers

SERVE = "from halobestie.cli import main; main()"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServeProcess:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill9(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def wait_serving(self, within: float = 60.0) -> None:
        """Until /healthz answers: startup (restore timers, seed) is over by then."""
        deadline = asyncio.get_running_loop().time() + within
        async with httpx.AsyncClient(base_url=self.url, timeout=2) as client:
            while True:
                if self.proc.returncode is not None:
                    raise AssertionError(f"serve exited {self.proc.returncode}: {self.tail()}")
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"serve not up in {within}s: {self.tail()}")
                await asyncio.sleep(0.05)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def serve_env(servers: Servers, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        DATABASE_URL=servers.database_url,
        VALKEY_URL=servers.valkey_url,
        JWT_SECRET=TEST_JWT_SECRET,
        PAYMENT_WEBHOOK_SECRET=TEST_WEBHOOK_SECRET,
        HALOBESTIE_ENV="test",
        TIMERS_ENABLED="true",
        SWEEPS_ENABLED="false",
        LOG_LEVEL="WARNING",
    )
    env.update(overrides)
    return env


@asynccontextmanager
async def serve_process(
    servers: Servers, log_dir: Path, name: str, **env: str
) -> AsyncIterator[ServeProcess]:
    """A `halobestie serve` child; killed on the way out whatever happened."""
    port = free_port()
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SERVE,
            "serve",
            "--port",
            str(port),
            env=serve_env(servers, **env),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    server = ServeProcess(proc, port, log)
    try:
        yield server
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except TimeoutError:
                proc.kill()
                await proc.wait()


# -- timers as the tests see them -------------------------------------------------------


async def pending_sessions_with_payment_timeouts(
    pg: asyncpg.Connection,
    count: int,
    due_at: datetime,
    spacing: timedelta = timedelta(milliseconds=10),
) -> list[UUID]:
    """`count` unpaid sessions (one customer, one mitra per session) and their payment
    timeouts, due one every `spacing` from `due_at`, all created in one transaction as
    the product does."""
    ids: list[UUID] = []
    async with pg.transaction():
        customer = await pg.fetchval(
            "INSERT INTO users (email, password_hash, display_name, role)"
            " VALUES ('timers-customer@example.com', 'x', 'C', 'customer') RETURNING id"
        )
        for n in range(count):
            mitra = await pg.fetchval(
                "INSERT INTO users (email, password_hash, display_name, role)"
                " VALUES ($1, 'x', 'M', 'mitra') RETURNING id",
                f"timers-mitra-{n}@example.com",
            )
            await pg.execute("INSERT INTO mitras (id) VALUES ($1)", mitra)
            session = await pg.fetchval(
                "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes)"
                " VALUES ($1, $2, 'pending_payment', 30) RETURNING id",
                customer,
                mitra,
            )
            # Spread over a window (short by default), as real traffic would be.
            await schedule_timer(pg, "payment_timeout", session, due_at + n * spacing)
            ids.append(session)
    return ids


async def timer_rows(pg: asyncpg.Connection, ids: list[UUID]) -> list[Any]:
    return list(
        await pg.fetch(
            "SELECT ref_id, due_at, fired_at FROM timers"
            " WHERE kind = 'payment_timeout' AND ref_id = ANY($1::uuid[])",
            ids,
        )
    )


async def cancellations(pg: asyncpg.Connection, ids: list[UUID]) -> dict[UUID, int]:
    """Per session: how many history rows record its move to `cancelled`."""
    rows = await pg.fetch(
        "SELECT s.id, count(e.id) AS n FROM chat_sessions s"
        " LEFT JOIN chat_session_events e ON e.session_id = s.id AND e.to_status = 'cancelled'"
        " WHERE s.id = ANY($1::uuid[]) GROUP BY s.id",
        ids,
    )
    return {row["id"]: row["n"] for row in rows}


async def statuses(pg: asyncpg.Connection, ids: list[UUID]) -> set[str]:
    rows = await pg.fetch(
        "SELECT DISTINCT status FROM chat_sessions WHERE id = ANY($1::uuid[])", ids
    )
    return {row["status"] for row in rows}
