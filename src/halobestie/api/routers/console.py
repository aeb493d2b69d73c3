"""The operator console: the page at /admin (static files, no build step) and the admin
API views it reads (docs/subsystems/console.md). Live updates come over /ws as
`admin.counts` (console/feed.py)."""

from __future__ import annotations

from importlib import resources
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from ...console.feed import AdminFeed
from ...console.models import MitraFilter, MitraPage, OverviewWithHistory, SessionEvents
from ...console.queries import mitra_page, overview, session_events
from ..deps import Admin, CtxDep, NowDep

router = APIRouter(tags=["console"])

# The page's own headers: nothing but this origin may run or be reached from it.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _page() -> str:
    return resources.files("halobestie.console").joinpath("static/index.html").read_text()


def admin_feed(request: Request) -> AdminFeed:
    feed: AdminFeed = request.app.state.admin_feed
    return feed


@router.get("/admin", include_in_schema=False)
async def console_page() -> HTMLResponse:
    return HTMLResponse(_page(), headers=PAGE_HEADERS)


@router.get("/admin/", include_in_schema=False)
async def console_page_slash() -> RedirectResponse:
    return RedirectResponse("/admin", status_code=308)


@router.get("/api/admin/overview", response_model=OverviewWithHistory)
async def get_overview(_: Admin, ctx: CtxDep, now: NowDep, request: Request) -> OverviewWithHistory:
    """Counts, sessions, beacon and health as of now, with this instance's recent samples
    (the chart). The same data, without history, is pushed over /ws as `admin.counts`."""
    view = await overview(ctx, now)
    history = list(admin_feed(request).history)
    return OverviewWithHistory(**view.model_dump(), history=history)


@router.get("/api/admin/mitra-states", response_model=MitraPage)
async def get_mitra_states(
    _: Admin,
    ctx: CtxDep,
    now: NowDep,
    filter_: Annotated[MitraFilter, Query(alias="filter")] = "all",
    after: Annotated[UUID | None, Query(description="next_after of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> MitraPage:
    """One page of mitras in id order with their state, load, heartbeat age and open
    sessions (time left). 503 database_unavailable while Postgres is down."""
    return await mitra_page(ctx, now, filter_, after, limit)


@router.get("/api/admin/session-events", response_model=SessionEvents)
async def get_session_events(
    _: Admin,
    ctx: CtxDep,
    after_id: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,  # a bigint id
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> SessionEvents:
    """The latest session status changes (newest first), all sessions; `after_id` returns
    only those newer than an id already shown."""
    return await session_events(ctx, after_id, limit)


static = StaticFiles(packages=[("halobestie.console", "static")])
