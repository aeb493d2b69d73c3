"""CORS: the browser front ends on other origins that may call the API.

`CORS_ALLOWED_ORIGINS` lists them, exactly (config.parse_origins); none by default, so a
production instance answers no cross-origin browser until its front ends are named, and
`halobestie dev` allows the local front-end dev servers (config.DEV_CORS_ALLOWED_ORIGINS).
Starlette's CORSMiddleware does the work, around the framework (app.create_app) and around
the hot path, which answers before the framework (hotpath.py), so that the beacon and the
heartbeat are reachable from a browser like every other endpoint:

- a preflight (OPTIONS with Origin and Access-Control-Request-Method) from an allowed
  origin is answered 200 with the methods and headers below (Authorization among them: the
  API's tokens are bearer tokens, never cookies, so credentials stay off);
- a request from an allowed origin gets Access-Control-Allow-Origin: <that origin>, and
  may read Retry-After (503s) and WWW-Authenticate (401s);
- a disallowed origin gets no Access-Control-* header at all: its preflight is refused 403
  in the usual `{"error", "detail"}` shape, and its requests are answered as for any other
  client, which the browser then withholds from the page.

What it costs: with no origin configured, nothing (no middleware). With some, every
request pays one scan of its headers for Origin.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Send

from .errors import error_response

ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
ALLOW_HEADERS = ("Authorization", "Content-Type")
EXPOSE_HEADERS = ("Retry-After", "WWW-Authenticate")
MAX_AGE_SECONDS = 600  # how long a browser may reuse a preflight's answer
PREFLIGHT_REFUSED = "cors_preflight_refused"


class Cors(CORSMiddleware):
    """Starlette's CORSMiddleware for exact origins, refusing a preflight without any
    Access-Control-* header (Starlette's refusal carries the allowed methods and headers)."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=tuple(origins),
            allow_methods=ALLOW_METHODS,
            allow_headers=ALLOW_HEADERS,
            expose_headers=EXPOSE_HEADERS,
            max_age=MAX_AGE_SECONDS,
        )

    async def send(self, message: Message, send: Send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if origin is None or self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return
        # Starlette would still add Access-Control-Expose-Headers: answer as to a client
        # without an Origin, only varying on it (a cache must not serve it to FRONT).
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            MutableHeaders(scope=message).add_vary_header("Origin")
        await send(message)

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
