"""The one place that maps the domain's error tree to HTTP status codes.

Every error leaves as `{"error": code, "detail": ...}`; nothing internal (stack traces,
SQL, secrets) reaches a client.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from .. import errors as e
from ..db import BOUND_REACHED, UNREACHABLE, InvalidArgument, bound_reached
from ..logs import get_logger

log = get_logger(__name__)

STATUS: list[tuple[type[e.DomainError], int]] = [
    (e.InvalidRequest, 422),
    (e.NotFound, 404),
    (e.Conflict, 409),
    (e.AuthError, 401),
    (e.Forbidden, 403),
    (e.Gone, 410),
    (e.RateLimited, 429),
    (e.ServiceUnavailable, 503),
    (e.ValkeyUnavailable, 503),
]

HTTP_CODES = {
    400: "bad_request",
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, detail: Any, **headers: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def status_for(exc: e.DomainError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


# (status, JSON body, extra headers) of an error answer.
Described = tuple[int, dict[str, Any], dict[str, str]]


def domain_error(exc: e.DomainError) -> Described:
    """Status, body and headers for a domain error (shared with the lean hot path)."""
    status = status_for(exc)
    # The webhook's signature is not a bearer token: no challenge for it.
    bearer = status == 401 and not isinstance(exc, e.InvalidSignature)
    headers = {"WWW-Authenticate": "Bearer"} if bearer else {}
    if status == 503:
        headers["Retry-After"] = "1"
    if isinstance(exc, e.RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    return status, {"error": exc.code, "detail": exc.detail}, headers


UNREACHABLE_ERROR: Described = (
    503,
    {"error": "database_unavailable", "detail": "Postgres is unreachable"},
    {"Retry-After": "1"},
)
UNEXPECTED_ERROR: Described = (
    500,
    {"error": "internal_error", "detail": "unexpected error; it has been logged"},
    {},
)


def method_not_allowed(allowed: str) -> Described:
    return 405, {"error": HTTP_CODES[405], "detail": "Method Not Allowed"}, {"Allow": allowed}


def _respond(described: Described) -> JSONResponse:
    status, body, headers = described
    return JSONResponse(body, status_code=status, headers=headers)


async def _domain(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.DomainError)
    return _respond(domain_error(exc))


def _describe(err: dict[str, Any]) -> str:
    if err.get("type") == "json_invalid":
        # FastAPI's loc is ("body", character offset); its msg only "JSON decode error".
        at = err.get("loc", ("body", "?"))[-1]
        why = (err.get("ctx") or {}).get("error", "malformed")
        return f"body is not valid JSON: {why} at character offset {at}"
    where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
    # A field name is the client's text: one holding a lone surrogate must not make the
    # answer itself unencodable (a 500 from JSONResponse).
    where = where.encode("utf-8", "backslashreplace").decode()
    return f"{where}: {err.get('msg', 'invalid')}"


def _is_json(content_type: str) -> bool:
    """FastAPI's test of whether it parses a body as JSON: application/json or */*+json."""
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


def _not_sent_as_json(request: Request, errs: list[dict[str, Any]]) -> str | None:
    """The detail for a body FastAPI left unparsed because its Content-Type is not JSON
    (`curl -d` sends application/x-www-form-urlencoded), or None. Without it the client
    reads "body: Input should be a valid dictionary" about a body that is a JSON object."""
    content_type = request.headers.get("content-type", "")
    if _is_json(content_type):
        return None
    if not any(tuple(err.get("loc", ())) == ("body",) and err.get("type") != "missing"
               for err in errs):  # fmt: skip
        return None
    got = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
    return f"body: send it as JSON with Content-Type: application/json (got {got})"


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errs = list(exc.errors())
    detail = _not_sent_as_json(request, errs)
    if detail is None:
        detail = "; ".join(_describe(err) for err in errs[:10]) or "invalid request"
    return error_response(422, "invalid_request", detail)


def _unparsable(cause: BaseException | None) -> str:
    """Why a body FastAPI could not parse is refused: json.loads raised something other than
    a JSONDecodeError (which is a 422 with its position)."""
    if isinstance(cause, UnicodeDecodeError):
        return "body cannot be parsed: it must be JSON in UTF-8"
    if isinstance(cause, RecursionError):
        return "body cannot be parsed: its JSON is nested too deeply"
    if isinstance(cause, ValueError):  # Python's int limit: more than 4300 digits
        return "body cannot be parsed: a number in it has too many digits"
    return "body cannot be parsed: it must be JSON in UTF-8"


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    detail = exc.detail
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        detail = _unparsable(exc.__cause__)  # FastAPI's says neither what nor why
    return error_response(exc.status_code, code, detail, **(exc.headers or {}))


async def _unreachable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("postgres_unreachable_unwrapped", error=type(exc).__name__)
    return _respond(UNREACHABLE_ERROR)


# A database error the client caused: Postgres' data exceptions (SQLSTATE class 22:
# NUL in text, a malformed or out-of-range value, a string too long for its column) and
# asyncpg refusing to encode an argument (a lone surrogate). The body types refuse these
# up front (bodies.Text); this is the net behind them, so it is logged as a gap to close.
CLIENT_DATA_ERRORS: tuple[type[Exception], ...] = (asyncpg.DataError, InvalidArgument)
CLIENT_DATA_ERROR: Described = (
    422,
    {"error": "invalid_request", "detail": "a value in this request cannot be stored"},
    {},
)


async def _client_data(request: Request, exc: Exception) -> JSONResponse:
    log.warning("client_data_error", path=request.url.path, error=type(exc).__name__)
    return _respond(CLIENT_DATA_ERROR)


async def _bound_reached(_: Request, exc: Exception) -> JSONResponse:
    # Normally translated by db.connection already; this is the net for a raw one.
    return _respond(domain_error(bound_reached(exc)))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, exc_info=exc)
    return _respond(UNEXPECTED_ERROR)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(e.DomainError, _domain)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    for cls in UNREACHABLE:
        app.add_exception_handler(cls, _unreachable)
    for cls in BOUND_REACHED:
        app.add_exception_handler(cls, _bound_reached)
    # Registered for the exact classes: InvalidArgument is also an InterfaceError, and
    # Starlette picks the handler of the nearest class in the exception's MRO.
    for cls in CLIENT_DATA_ERRORS:
        app.add_exception_handler(cls, _client_data)
    app.add_exception_handler(Exception, _unexpected)
