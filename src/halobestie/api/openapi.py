"""The API description (/openapi.json) and the docs page (/docs), both as clients meet them.

What FastAPI derives from the routes is completed here, once, for every operation:

* Error answers: every documented 4xx/5xx is `ErrorBody` (`{"error", "detail"}`), with
  the statuses `errors.STATUS` maps the route's domain errors to (`documented`). FastAPI's
  own `HTTPValidationError` (a shape this API never sends) is replaced by `ErrorBody`.
* Auth: routes that check a token declare the `bearer` scheme (deps.BEARER), so the
  docs page's Authorize button sends it; they are documented with 401 and 403.
* The hot path (api/hotpath.py, plain ASGI, invisible to FastAPI) is added by hand.
* /docs loads Swagger UI from the `swagger-ui-bundle` package, served by the app: the
  page works without internet. (ReDoc, which only loads from a CDN, is off.)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from .. import errors as e
from .errors import STATUS
from .hotpath import BEACON_PATH, HEARTBEAT_PATH
from .models import AvailabilityBeacon, ErrorBody, HeartbeatOut

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
DOCS_STATIC = "/docs/static"

# What each documented status means, for the reader of /docs.
MEANING = {
    400: "the body cannot be read as JSON at all, e.g. not UTF-8 (bad_request)",
    401: "no valid access token (invalid_token, invalid_credentials, invalid_signature)",
    403: "the token's role may not do this (forbidden, account_deactivated, ...)",
    404: "not found, or not visible to the caller",
    409: "conflicts with the current state (invalid_state, already_taken, ...)",
    410: "no longer kept (events_expired: refetch the state, then continue from last_seq)",
    413: "body over the size limit (payload_too_large)",
    422: "the request is malformed (invalid_request): detail says what and where",
    429: "rate limited (too_many_attempts): retry after Retry-After seconds",
    503: "Postgres or Valkey unavailable, or overloaded: retry after Retry-After",
}


def status_of(error: type[e.DomainError]) -> int:
    """The status `api/errors.py` answers for this domain error class."""
    for cls, status in STATUS:
        if issubclass(error, cls):
            return status
    return 400


def documented(*errors: type[e.DomainError]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route that can raise these domain errors: each one's status,
    answered with `ErrorBody`."""
    return {
        status_of(err): {"model": ErrorBody, "description": MEANING.get(status_of(err), "")}
        for err in errors
    }


def _error(status: int) -> dict[str, Any]:
    return {
        "description": MEANING.get(status, "error"),
        "content": {"application/json": {"schema": ERROR_REF}},
    }


def _hot_path(component: type[Any]) -> dict[str, Any]:
    return {
        "description": "OK",
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{component.__name__}"}}
        },
    }


def hot_path_operations() -> dict[str, Any]:
    """The heartbeat and beacon (served by api/hotpath.py before FastAPI)."""
    return {
        HEARTBEAT_PATH: {
            "post": {
                "tags": ["mitra"],
                "summary": "Heartbeat",
                "description": "A mitra's liveness ping, every next_heartbeat_in_seconds.",
                "operationId": "heartbeat",
                "security": [{"bearer": []}],
                "responses": {
                    "200": _hot_path(HeartbeatOut),
                    "409": _error(409),  # not_online: go online first
                },
            }
        },
        BEACON_PATH: {
            "get": {
                "tags": ["availability"],
                "summary": "Beacon",
                "description": "Whether any mitra is available now (cached; no token).",
                "operationId": "beacon",
                "responses": {"200": _hot_path(AvailabilityBeacon)},
            }
        },
    }


def _complete(operation: dict[str, Any], path: str) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    if operation.get("security"):
        responses.setdefault("401", _error(401))
        responses.setdefault("403", _error(403))
    if "requestBody" in operation:  # bytes that are not UTF-8 JSON at all (bad_request)
        responses.setdefault("400", _error(400))
    if "{" in path:  # an id in the path may name nothing (or nothing the caller may see)
        responses.setdefault("404", _error(404))
    if path.startswith("/api/"):
        # Any route: a body over the limit; Postgres (or for the beacon, both stores) down.
        responses.setdefault("413", _error(413))
        responses.setdefault("503", _error(503))
    for status, response in responses.items():
        if status.startswith(("4", "5")):
            response["content"] = {"application/json": {"schema": ERROR_REF}}
            response["description"] = MEANING.get(int(status), response.get("description", ""))


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document, built once per app (FastAPI's cache: `app.openapi_schema`)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schema["paths"].update(hot_path_operations())
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for model in (ErrorBody, HeartbeatOut, AvailabilityBeacon):
        # A name FastAPI already gave another model would silently replace its schema.
        own = model.model_json_schema(ref_template="#/components/schemas/{model}")
        assert schemas.get(model.__name__, own) == own, f"schema name clash: {model.__name__}"
        schemas[model.__name__] = own
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    components.setdefault("securitySchemes", {})["bearer"] = {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "the access_token of POST /api/auth/login (or register, refresh)",
    }
    for path, item in schema["paths"].items():
        for operation in item.values():
            _complete(operation, path)
    app.openapi_schema = schema
    return schema


def install_docs(app: FastAPI) -> None:
    """/openapi.json as above and /docs from packaged assets (create the app with
    docs_url=None, redoc_url=None)."""
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    app.mount(DOCS_STATIC, StaticFiles(directory=str(swagger_ui_path)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon-32x32.png",
        )
