"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from ...db import UNREACHABLE
from ...errors import DatabaseBusy, DatabaseUnavailable
from ..deps import CtxDep
from ..models import Liveness, Readiness

router = APIRouter(tags=["ops"])
NOT_READY: tuple[type[Exception], ...] = (DatabaseUnavailable, *UNREACHABLE)


@router.get("/healthz")
async def healthz() -> Liveness:
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: Postgres is not answering"}},
)
async def readyz(ctx: CtxDep) -> JSONResponse:
    """Ready while Postgres answers; a degraded Valkey is still ready (reads fall back)."""
    valkey = "ok" if ctx.mirror.trusted and ctx.mirror.reachable else "degraded"
    try:
        async with ctx.db.connection() as conn:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), ctx.settings.database_timeout_seconds)
    except NOT_READY:
        return JSONResponse({"postgres": "unavailable", "valkey": valkey}, status_code=503)
    except DatabaseBusy as exc:  # reachable, but no connection free (or too slow) for us
        return JSONResponse({"postgres": exc.code, "valkey": valkey}, status_code=503)
    return JSONResponse({"postgres": "ok", "valkey": valkey})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: CtxDep) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
