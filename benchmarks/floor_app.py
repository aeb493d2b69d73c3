"""The framework floor: a bare Starlette app doing what the heartbeat does in Valkey,
and nothing else (no token, no engine, no middleware).

POST /heartbeat   one EVALSHA of the engine's own heartbeat script (the same single
                  Valkey command the real endpoint sends), the same JSON answer shape;
                  the mitra id comes from the X-Mitra-Id header.
GET  /plain       a constant JSON answer: Starlette + uvicorn alone.

Served by uvicorn with the same options as `halobestie serve` (uvloop, httptools,
no access log, the heap frozen for the GC). Reads VALKEY_URL from the environment.
"""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import valkey.asyncio as valkey_async
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from halobestie.valkey import keys as key_names

_HEARTBEAT_LUA = (
    resources.files("halobestie.availability").joinpath("lua/heartbeat.lua").read_text()
)
_state: dict[str, Any] = {}


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def heartbeat(request: Request) -> JSONResponse:
    mitra_id = request.headers.get("x-mitra-id", "")
    now = datetime.now(UTC)
    outcome = await _state["script"](
        keys=[key_names.DEACTIVATED, key_names.ONLINE, key_names.HEARTBEAT + mitra_id],
        args=[mitra_id, _iso(now)],
    )
    if outcome != 1:
        return JSONResponse({"error": "not_online", "detail": str(outcome)}, status_code=409)
    return JSONResponse({"is_online": True, "at": _iso(now), "next_heartbeat_in_seconds": 20})


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    client = valkey_async.Valkey.from_url(os.environ["VALKEY_URL"], decode_responses=True)
    _state["script"] = client.register_script(_HEARTBEAT_LUA)
    try:
        yield
    finally:
        await client.aclose()


app = Starlette(
    routes=[
        Route("/heartbeat", heartbeat, methods=["POST"]),
        Route("/plain", plain, methods=["GET"]),
    ],
    lifespan=lifespan,
)
# The same treatment `halobestie serve` gives the real app (see cli._serve).
gc.collect()
gc.freeze()
