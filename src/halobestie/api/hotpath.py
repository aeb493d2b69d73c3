"""The hot path, heartbeat and beacon, answered in plain ASGI before the framework.

Every mitra pings the heartbeat every HEARTBEAT_INTERVAL_SECONDS and every waiting
customer polls the beacon, so these two skip the framework: measured with
`benchmarks.ab`, a FastAPI route costs ~45 % of the throughput of the same Starlette
route, and Starlette's middleware, routing, Request and response objects cost a further
~30 % of the heartbeat's. `app.HalobestieApp` hands these two paths to `HotPath` before
its middleware stack, and the answer is built straight from the ASGI scope.

What it costs: FastAPI does not see these two paths (api/openapi.py adds them to
/openapi.json by hand), and they answer wrong methods (405) and errors themselves —
through `errors.py`'s mapping, so clients see the same `{"error", "detail"}` shapes,
statuses and headers as everywhere else. A request announcing a body over the limit
still goes the long way, to be refused 413 by the body-limit middleware like any other
(neither endpoint reads a body).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.types import Scope, Send

from ..availability.actions import do_record_heartbeat
from ..availability.beacon import get_beacon
from ..availability.flight import Snapshot
from ..context import Context
from ..db import BOUND_REACHED, UNREACHABLE, bound_reached
from ..errors import DomainError
from ..logs import get_logger
from .auth import principal_from_header
from .errors import UNEXPECTED_ERROR, UNREACHABLE_ERROR, domain_error, method_not_allowed
from .limits import announces_too_large

log = get_logger(__name__)

HEARTBEAT_PATH = "/api/mitra/status/heartbeat"
BEACON_PATH = "/api/availability"

_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


def _encode(body: Any) -> bytes:
    # The same bytes Starlette's JSONResponse would send (compact, UTF-8), in a tenth of
    # the time of the json module: measured at 4 % of a heartbeat's CPU before.
    return orjson.dumps(body)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class HotPath:
    """Answers the two hot endpoints (`handles` says which requests)."""

    PATHS = frozenset((HEARTBEAT_PATH, BEACON_PATH))

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def handles(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope["path"] not in self.PATHS:
            return False
        return not announces_too_large(scope)

    async def __call__(self, scope: Scope, send: Send) -> None:
        if scope["path"] == HEARTBEAT_PATH:
            await self._answer(scope, send, self._heartbeat, ("POST",), ())
        else:
            await self._answer(scope, send, self._beacon, ("GET", "HEAD"), (_NO_STORE,))

    async def _heartbeat(self, scope: Scope) -> dict[str, object]:
        ctx = self.ctx
        now = ctx.clock.now()
        authorization = _header(scope, b"authorization")
        principal = principal_from_header(ctx, authorization, now, ("mitra",))
        result = await do_record_heartbeat(ctx, principal.user_id, now)
        return {
            "is_online": True,
            "at": result.at_iso,
            "next_heartbeat_in_seconds": ctx.settings.heartbeat_interval_seconds,
        }

    async def _beacon(self, scope: Scope) -> Snapshot:
        return await get_beacon(self.ctx, self.ctx.clock.now())

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        handler: Any,
        methods: tuple[str, ...],
        extra: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        headers: dict[str, str] = {}
        if scope["method"] not in methods:
            status, body, headers = method_not_allowed(", ".join(methods))
        else:
            try:
                status, body = 200, await handler(scope)
            except DomainError as exc:
                status, body, headers = domain_error(exc)
            except UNREACHABLE as exc:
                log.warning("postgres_unreachable_unwrapped", error=type(exc).__name__)
                status, body, headers = UNREACHABLE_ERROR
            except BOUND_REACHED as exc:
                status, body, headers = domain_error(bound_reached(exc))
            except Exception as exc:  # never a bare 500 from the framework
                log.error(
                    "unhandled_error", path=scope["path"], error=type(exc).__name__, exc_info=exc
                )
                status, body, headers = UNEXPECTED_ERROR
        payload = _encode(body)
        raw = [_JSON, (b"content-length", str(len(payload)).encode()), *extra]
        raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload}
        )
