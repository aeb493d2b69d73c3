"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import weakref

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from ...db import UNREACHABLE, Database
from ...errors import DatabaseBusy, DatabaseUnavailable
from ..deps import CtxDep
from ..models import Liveness, Readiness

router = APIRouter(tags=["ops"])
NOT_READY: tuple[type[Exception], ...] = (DatabaseUnavailable, *UNREACHABLE)


@router.get("/healthz")
async def healthz() -> Liveness:
    return Liveness(status="ok")


# HEAD beside GET on both probes: some load balancers check with HEAD. Kept out of the
# schema (one operation per probe there; a second would repeat its operationId).
@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    return Response(media_type="application/json")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: Postgres is not answering"}},
)
async def readyz(ctx: CtxDep) -> JSONResponse:
    """Ready while Postgres answers; a degraded Valkey is still ready (reads fall back).
    Answers within the statement bound (0.8 x DATABASE_TIMEOUT_SECONDS, 4 s by default)
    whatever Postgres does: a frozen Postgres holds a check for a query timeout plus the
    cleanup of the cut query (~10 s), past a load balancer's own probe timeout (5 s on the
    usual defaults), which then reads as a failure without its reason. One check runs at a
    time per instance; probes arriving meanwhile wait for it (a stalled Postgres is not
    asked once per probe)."""
    valkey = "ok" if ctx.mirror.trusted and ctx.mirror.reachable else "degraded"
    check = _checks.get(ctx.db)
    if check is None or check.done():
        check = _checks[ctx.db] = asyncio.create_task(_postgres_state(ctx.db))
    done, _ = await asyncio.wait({check}, timeout=ctx.settings.statement_timeout_bound)
    if done:
        postgres = check.result()
    else:  # still waiting: for a pooled connection if every one is taken, else for Postgres
        postgres = "overloaded" if ctx.db.saturated else "unavailable"
    status = 200 if postgres == "ok" else 503
    return JSONResponse({"postgres": postgres, "valkey": valkey}, status_code=status)


# The readiness check in flight per pool (see readyz): the task is kept until it ends by
# its own bounds (the pool wait and the command timeout), so no probe ever cancels a query.
_checks: weakref.WeakKeyDictionary[Database, asyncio.Task[str]] = weakref.WeakKeyDictionary()


async def _postgres_state(db: Database) -> str:
    """ "ok", or why not: "unavailable" or the DatabaseBusy code ("overloaded", ...)."""
    try:
        async with db.connection() as conn:
            await conn.fetchval("SELECT 1")
    except NOT_READY:
        return "unavailable"
    except DatabaseBusy as exc:  # reachable, but no connection free (or too slow) for us
        return exc.code
    return "ok"


@router.head("/readyz", include_in_schema=False)
async def readyz_head(ctx: CtxDep) -> Response:
    """/readyz's status code and headers, without its body."""
    answer = await readyz(ctx)
    return Response(status_code=answer.status_code, media_type="application/json")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: CtxDep) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
