"""The ASGI application: routers, hot-path routes, error handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..clock import Clock
from ..config import Settings
from ..events import ws
from ..logs import configure_logging
from ..runtime import Runtime
from . import hotpath
from .errors import install_error_handlers
from .limits import BodyLimitMiddleware
from .routers import admin, auth, mitra, ops, pairing, payments, public, sessions


def create_app(settings: Settings, *, clock: Clock | None = None) -> FastAPI:
    configure_logging(settings.log_level)
    runtime = Runtime(settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="halobestie", version="0.1.0", lifespan=lifespan)
    app.state.ctx = runtime.ctx
    app.state.runtime = runtime
    # Hot path first: plain Starlette routes, matched before the FastAPI ones.
    for route in (*hotpath.routes, *ws.routes):
        app.router.routes.append(route)
    routers = (auth.router, admin.router, mitra.router, public.router, ops.router, pairing.router)
    for router in (*routers, sessions.router, payments.router):
        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    return app
