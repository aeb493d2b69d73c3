"""Real servers for real-time tests: apps served by uvicorn on free ports inside the test
process (so a test can reach `ctx` and the clock), and WebSocket clients on them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from websockets.asyncio.client import ClientConnection, connect

from halobestie.api.app import create_app
from halobestie.clock import Clock, ManualClock
from halobestie.context import Context
from tests.conftest import Servers, eventually, on_test_servers, settings_for

CLIENT_TIMEOUT = 30.0  # seconds: a Live's HTTP client


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: several run in one test process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class Live:
    """One app served over real TCP."""

    app: FastAPI
    port: int
    client: httpx.AsyncClient
    clock: Clock

    @property
    def ctx(self) -> Context:
        ctx: Context = self.app.state.ctx
        return ctx

    def ws_url(self, token: str | None) -> str:
        query = "" if token is None else f"?token={token}"
        return f"ws://127.0.0.1:{self.port}/ws{query}"


@contextlib.contextmanager
def _bound_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


@asynccontextmanager
async def serve(app: FastAPI, clock: Clock) -> AsyncIterator[Live]:
    config = uvicorn.Config(
        app, lifespan="on", log_level="warning", access_log=False, ws="websockets-sansio"
    )
    server = _Server(config)
    with _bound_socket() as sock:
        port = int(sock.getsockname()[1])
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            await eventually(lambda: server.started or task.done(), within=30)
            if task.done():
                task.result()  # startup failed: raise why
                raise AssertionError("uvicorn stopped during startup")
            # Not httpx's default 5 s: a run far more loaded than CI (tracemalloc on) had
            # a request to a cut Postgres answer its 503 past it. The test's own timeout
            # still bounds a hang.
            base_url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=base_url, timeout=CLIENT_TIMEOUT) as client:
                yield Live(app, port, client, clock)
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)


LiveFactory = Callable[..., AbstractAsyncContextManager[Live]]


@pytest.fixture(name="live_app")
def live_app_fixture(clean: Servers) -> LiveFactory:
    """`async with live_app(VALKEY_URL=...) as live:` an app on a real port, ManualClock
    unless `clock=` is given, timers and sweeps off unless overridden."""

    @asynccontextmanager
    async def factory(clock: Clock | None = None, **overrides: Any) -> AsyncIterator[Live]:
        clock = clock or ManualClock()
        app = create_app(settings_for(**on_test_servers(clean, overrides)), clock=clock)
        async with serve(app, clock) as live:
            yield live

    return factory


# -- WebSocket clients -----------------------------------------------------------------


@asynccontextmanager
async def open_socket(live: Live, token: str | None) -> AsyncIterator[ClientConnection]:
    """A socket that got its `ready` event: from now on every event for its user reaches it."""
    async with connect(live.ws_url(token), open_timeout=10, close_timeout=2) as ws:
        first = await next_event(ws)
        assert first["type"] == "ready", first
        yield ws


async def next_event(ws: ClientConnection, within: float = 10.0) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), within)
    event: dict[str, Any] = json.loads(raw)
    return event


async def next_event_of(ws: ClientConnection, type_: str, within: float = 10.0) -> dict[str, Any]:
    """The next event of this type, skipping others (e.g. `session.updated` around it)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        left = deadline - asyncio.get_running_loop().time()
        event = await next_event(ws, max(left, 0.01))
        if event["type"] == type_:
            return event


async def nothing_pending(ws: ClientConnection, wait: float = 0.3) -> bool:
    """True when no event arrives within `wait` (a bounded look, not a timing assertion:
    used only where an event arriving would be the bug)."""
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except TimeoutError:
        return True
    return False
