"""The ASGI application: routers, hot-path routes, error handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from ..clock import Clock
from ..config import Settings
from ..console.feed import AdminFeed
from ..logs import configure_logging
from ..runtime import Runtime
from . import ws
from .cors import Cors
from .errors import install_error_handlers
from .hotpath import HotPath
from .limits import BodyLimitMiddleware
from .openapi import install_docs
from .routers import (
    admin,
    auth,
    chat,
    console,
    events,
    mitra,
    ops,
    pairing,
    payments,
    public,
    sessions,
)


class HalobestieApp(FastAPI):
    """FastAPI, with the hot path answered before the middleware stack (hotpath.py)."""

    hotpath: HotPath
    # The hot path behind CORS when CORS_ALLOWED_ORIGINS names origins (cors.py).
    hotpath_cors: Cors | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hotpath.handles(scope):
            if self.hotpath_cors is None:
                await self.hotpath(scope, send)
            else:
                await self.hotpath_cors(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    configure_logging(settings.log_level)
    runtime = Runtime(settings, clock)
    feed = AdminFeed(runtime.ctx)  # admin.counts to this instance's admins (console.md)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await feed.stop()
            await runtime.stop()

    app = HalobestieApp(
        title="halobestie",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by install_docs from packaged assets (no CDN)
        redoc_url=None,
        # operationId = the route function's name: what a generated client calls it.
        generate_unique_id_function=lambda route: route.name,
    )
    app.hotpath = HotPath(runtime.ctx)
    app.state.ctx = runtime.ctx
    app.state.runtime = runtime
    app.state.admin_feed = feed
    for route in ws.routes:
        app.router.routes.append(route)
    routers = (auth.router, admin.router, mitra.router, public.router, ops.router, pairing.router)
    for router in (*routers, sessions.router, chat.router, events.router):
        app.include_router(router)
    for router in (payments.router, console.router):
        app.include_router(router)
    app.mount("/admin/static", console.static, name="console-static")
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(BodyLimitMiddleware)
    if settings.cors_allowed_origins:  # outermost: refusals (413, 405) carry CORS too
        origins = settings.cors_allowed_origins
        app.add_middleware(Cors, origins=origins)
        hotpath = app.hotpath

        async def hot(scope: Scope, receive: Receive, send: Send) -> None:
            await hotpath(scope, send)

        app.hotpath_cors = Cors(hot, origins)
    return app
