"""CORS: the browser front ends on other origins that may call the API.

`CORS_ALLOWED_ORIGINS` lists them, exactly (settings_types.parse_origins); none by default, so a
production instance answers no cross-origin browser until its front ends are named, and
`halobestie dev` allows the local front-end dev servers (config.DEV_CORS_ALLOWED_ORIGINS).
`Cors` (Starlette's CORSMiddleware, which answers the preflights, with a leaner path for
the other requests) wraps the framework (app.create_app) and the hot path, which answers
before the framework (hotpath.py), so that the beacon and the heartbeat are reachable from
a browser like every other endpoint:

- a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed
  origin is answered 200 with the methods and headers below (Authorization among them: the
  API's tokens are bearer tokens, never cookies, so credentials stay off);
- a request from an allowed origin gets Access-Control-Allow-Origin: <that origin>, and
  may read Retry-After (503s) and WWW-Authenticate (401s);
- a disallowed origin gets no Access-Control-* header at all: its preflight is refused 403
  in the usual `{"error", "detail"}` shape, and its requests are answered as for any other
  client, which the browser then withholds from the page.

What it costs: with no origin configured, nothing (no middleware). With some, every
request pays one scan of its headers for Origin and two appended headers: 3-4 us
(`Cors.__call__`, which answers simple requests itself for that reason).
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key")
EXPOSE_HEADERS = ("Retry-After", "WWW-Authenticate")
MAX_AGE_SECONDS = 600  # how long a browser may reuse a preflight's answer
PREFLIGHT_REFUSED = "cors_preflight_refused"


class Cors(CORSMiddleware):
    """Starlette's CORSMiddleware for exact origins, refusing a preflight without any
    Access-Control-* header (Starlette's refusal carries the allowed methods and headers),
    and adding the headers of other requests itself (`__call__`)."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=tuple(origins),
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            max_age=MAX_AGE_SECONDS,
        )
        self._allowed = frozenset(origins)
        self._expose = (b"access-control-expose-headers", ", ".join(EXPOSE_HEADERS).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Preflights go to Starlette; every other request is answered by the app with
        the headers appended here, in one pass over the request's headers and none over
        the answer's. Measured around a bare ASGI app (best of 5 x 50k calls on the
        2-core box): Starlette's simple-request path, with its Headers and MutableHeaders,
        adds 10 us a request without Origin and 21 us with one; this adds 3 and 4."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = None
        preflight = False
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"access-control-request-method":
                preflight = True
        if origin is not None and preflight and scope["method"] == "OPTIONS":
            response = self.preflight_response(Headers(scope=scope))
            await response(scope, receive, send)
            return
        # Vary: Origin on every answer, so that a cache never hands one made for another
        # origin (or for none) to this one; the origin itself only if it is allowed.
        extra = [(b"vary", b"Origin")]
        if origin is not None and origin.decode("latin-1") in self._allowed:
            extra += [(b"access-control-allow-origin", origin), self._expose]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        # Starlette says what failed: "Disallowed CORS origin, headers".
        detail = bytes(answer.body).decode().removeprefix("Disallowed CORS ")
        return error_response(
            403,
            PREFLIGHT_REFUSED,
            f"cross-origin request refused (not allowed: {detail})",
            Vary="Origin",
        )
