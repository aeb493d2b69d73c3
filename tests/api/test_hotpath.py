"""The hot path (api/hotpath.py): heartbeat and beacon answered in plain ASGI before
FastAPI's middleware stack, with the same statuses, JSON bodies and headers as every
other endpoint; every other path still goes through FastAPI."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from starlette.responses import JSONResponse
from starlette.types import Message, Scope

from halobestie.api import hotpath
from halobestie.api.limits import MAX_BODY_BYTES
from halobestie.auth.tokens import Principal, issue_access_token
from halobestie.clock import iso
from tests.api.test_bad_input import assert_error
from tests.conftest import TEST_JWT_SECRET, Instance
from tests.factories import Person, make_user
from tests.failures.helpers import online_mitra

HEARTBEAT = "/api/mitra/status/heartbeat"
BEACON = "/api/availability"


def assert_heartbeat_answer(inst: Instance, r: httpx.Response, now: datetime) -> None:
    """200 with the contract's body, in the very bytes Starlette's JSONResponse sends."""
    assert r.status_code == 200, r.text
    assert r.json() == {
        "is_online": True,
        "at": iso(now),
        "next_heartbeat_in_seconds": interval(inst),
    }
    assert r.content == as_starlette_would_send(r.json())


def interval(inst: Instance) -> int:
    return inst.ctx.settings.heartbeat_interval_seconds


def as_starlette_would_send(body: Any) -> bytes:
    return bytes(JSONResponse(body).body)


async def raw_request(
    inst: Instance, method: str, path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request straight into the ASGI app: httpx's ASGI transport drops whatever
    body a HEAD response carries, a real server would not."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await inst.app(scope, receive, send)
    [start, *bodies] = sent
    assert start["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in bodies)
    return start["status"], dict(start["headers"]), body


class LogCapture:
    """Swaps the hot path's logger for one with the app's configured processors (the
    redactor and the JSON renderer included), rendering into a buffer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.buffer = io.StringIO()
        config = structlog.get_config()
        logger = structlog.wrap_logger(
            structlog.PrintLogger(self.buffer),
            processors=list(config["processors"]),
            wrapper_class=config["wrapper_class"],
        )
        monkeypatch.setattr(hotpath, "log", logger)

    @property
    def text(self) -> str:
        return self.buffer.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]


# -- the beacon ----------------------------------------------------------------------


async def test_get_beacon_answers_the_snapshot_as_starlette_would(
    inst: Instance, valkey: Any
) -> None:
    await online_mitra(inst)
    r = await inst.client.get(BEACON)

    assert r.status_code == 200, r.text
    assert r.json() == {
        "state": "available",
        "available_count": 1,
        "computed_at": iso(inst.clock.now()),
    }
    assert r.json() == json.loads(await valkey.get(inst.ctx.keys.snapshot))  # the shared one
    assert r.content == as_starlette_would_send(r.json())
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["content-type"] == "application/json"
    assert r.headers["cache-control"] == "no-store"


async def test_head_beacon_is_the_get_answer_without_its_body(inst: Instance) -> None:
    await online_mitra(inst)
    get = await inst.client.get(BEACON)
    status, headers, body = await raw_request(inst, "HEAD", BEACON)  # same snapshot (TTL)

    assert status == 200
    assert body == b""
    assert headers[b"cache-control"] == b"no-store"
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(get.content)).encode()


# -- methods and sizes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("GET", HEARTBEAT, "POST"), ("PUT", HEARTBEAT, "POST"), ("DELETE", HEARTBEAT, "POST"),
     ("PATCH", HEARTBEAT, "POST"), ("OPTIONS", HEARTBEAT, "POST"),
     ("POST", BEACON, "GET, HEAD"), ("PUT", BEACON, "GET, HEAD"), ("DELETE", BEACON, "GET, HEAD"),
     ("OPTIONS", BEACON, "GET, HEAD")],
)  # fmt: skip
async def test_wrong_methods_name_exactly_the_allowed_ones(
    inst: Instance, method: str, path: str, allow: str
) -> None:
    mitra = await online_mitra(inst)
    r = await inst.client.request(method, path, headers=mitra.headers)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == allow
    assert r.headers["content-length"] == str(len(r.content))


async def test_head_on_the_heartbeat_is_405_without_a_body_and_records_nothing(
    inst: Instance, valkey: Any
) -> None:
    mitra = await online_mitra(inst)
    before = await valkey.get(inst.ctx.keys.heartbeat(mitra.id))
    inst.clock.advance(5)
    auth = [(b"authorization", f"Bearer {mitra.token}".encode())]
    status, headers, body = await raw_request(inst, "HEAD", HEARTBEAT, auth)
    assert status == 405
    assert headers[b"allow"] == b"POST"
    assert body == b""
    assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == before


@pytest.mark.parametrize("path", [HEARTBEAT, BEACON])
async def test_announcing_a_body_over_64_kib_is_413(inst: Instance, valkey: Any, path: str) -> None:
    mitra = await online_mitra(inst)
    before = await valkey.get(inst.ctx.keys.heartbeat(mitra.id))
    inst.clock.advance(5)
    method = "POST" if path == HEARTBEAT else "GET"
    r = await inst.client.request(
        method, path, content=b"x" * (MAX_BODY_BYTES + 1), headers=mitra.headers
    )
    assert r.request.headers["content-length"] == str(MAX_BODY_BYTES + 1)
    assert_error(r, 413, "payload_too_large")
    assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == before  # not recorded


async def test_a_heartbeat_with_a_body_of_exactly_64_kib_is_answered(
    inst: Instance, valkey: Any
) -> None:
    mitra = await online_mitra(inst)
    now = inst.clock.advance(5)
    r = await inst.client.post(HEARTBEAT, content=b"x" * MAX_BODY_BYTES, headers=mitra.headers)
    assert_heartbeat_answer(inst, r, now)
    assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == iso(now)


# -- authentication ------------------------------------------------------------------


def _token(secret: str, mitra: Person, issued: datetime, role: str = "mitra") -> str:
    principal = Principal(mitra.id, uuid.uuid4(), role)
    return issue_access_token(secret, principal, issued, 900)


BAD_AUTHORIZATION: dict[str, Callable[[Person, datetime], str | None]] = {
    "missing": lambda m, now: None,
    "empty": lambda m, now: "",
    "bearer_without_token": lambda m, now: "Bearer ",
    "garbage": lambda m, now: "Bearer not.a.jwt",
    "basic_scheme": lambda m, now: f"Basic {m.token}",
    "token_without_scheme": lambda m, now: m.token,
    "other_secret": lambda m, now: "Bearer " + _token("another-secret-" + "x" * 32, m, now),
    "expired": lambda m, now: "Bearer " + _token(TEST_JWT_SECRET, m, now - timedelta(hours=1)),
}


@pytest.mark.parametrize("case", BAD_AUTHORIZATION)
async def test_a_missing_or_bad_token_is_401_with_a_bearer_challenge(
    inst: Instance, valkey: Any, case: str
) -> None:
    mitra = await online_mitra(inst)
    before = await valkey.get(inst.ctx.keys.heartbeat(mitra.id))
    now = inst.clock.advance(5)
    authorization = BAD_AUTHORIZATION[case](mitra, now)
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await inst.client.post(HEARTBEAT, headers=headers)
    assert_error(r, 401, "invalid_token")
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.content == as_starlette_would_send(r.json())
    assert await valkey.get(inst.ctx.keys.heartbeat(mitra.id)) == before


async def test_a_valid_token_of_the_same_mitra_is_accepted(inst: Instance) -> None:
    """The control for the cases above: a token built the same way, but good, passes."""
    mitra = await online_mitra(inst)
    now = inst.clock.advance(5)
    r = await inst.client.post(
        HEARTBEAT, headers={"Authorization": "Bearer " + _token(TEST_JWT_SECRET, mitra, now)}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("role", ["customer", "admin"])
async def test_a_token_of_another_role_is_403(inst: Instance, valkey: Any, role: str) -> None:
    other = await make_user(inst.ctx, role)
    r = await inst.client.post(HEARTBEAT, headers=other.headers)
    assert_error(r, 403, "forbidden")
    assert "www-authenticate" not in r.headers
    assert await valkey.keys(inst.ctx.keys.heartbeat_pattern) == []


# -- unexpected errors ---------------------------------------------------------------

SECRET_DETAIL = "internal detail that must stay inside"


def _break_action(inst: Instance, monkeypatch: pytest.MonkeyPatch, broken: Any) -> None:
    monkeypatch.setattr(hotpath, "do_record_heartbeat", broken)


def _break_lua_call(inst: Instance, monkeypatch: pytest.MonkeyPatch, broken: Any) -> None:
    # Deeper: inside the real heartbeat action, where the mirror does not expect it.
    monkeypatch.setattr(inst.ctx.mirror.batched, "call", broken)


def _break_beacon(inst: Instance, monkeypatch: pytest.MonkeyPatch, broken: Any) -> None:
    monkeypatch.setattr(hotpath, "get_beacon", broken)


@pytest.mark.parametrize(
    ("path", "method", "breaks"),
    [(HEARTBEAT, "POST", _break_action), (HEARTBEAT, "POST", _break_lua_call),
     (BEACON, "GET", _break_beacon)],
    ids=["heartbeat_action", "heartbeat_lua_call", "beacon"],
)  # fmt: skip
async def test_an_unexpected_exception_is_500_json_and_logged_without_secrets(
    inst: Instance,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    method: str,
    breaks: Callable[[Instance, pytest.MonkeyPatch, Any], None],
) -> None:
    mitra = await online_mitra(inst)
    logs = LogCapture(monkeypatch)

    async def broken(*args: Any) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    breaks(inst, monkeypatch, broken)
    r = await inst.client.request(method, path, headers=mitra.headers)

    assert_error(r, 500, "internal_error")
    assert SECRET_DETAIL not in r.text and "Traceback" not in r.text
    [entry] = [e for e in logs.entries() if e["event"] == "unhandled_error"]
    assert (entry["level"], entry["path"], entry["error"]) == ("error", path, "RuntimeError")
    assert "RuntimeError" in entry["exception"]  # the traceback, for the operators
    assert mitra.token not in logs.text
    assert TEST_JWT_SECRET not in logs.text

    # The app is fine afterwards.
    monkeypatch.undo()
    r = await inst.client.request(method, path, headers=mitra.headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "method", "target", "error"),
    [
        (HEARTBEAT, "POST", "do_record_heartbeat", asyncpg.ConnectionDoesNotExistError("gone")),
        (HEARTBEAT, "POST", "do_record_heartbeat", asyncpg.CannotConnectNowError("starting")),
        (BEACON, "GET", "get_beacon", ConnectionRefusedError(111, "Connection refused")),
    ],
    ids=["connection_lost", "cannot_connect_now", "refused"],
)
async def test_an_unwrapped_postgres_connection_error_is_503_with_retry_after(
    inst: Instance,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    method: str,
    target: str,
    error: Exception,
) -> None:
    mitra = await online_mitra(inst)
    logs = LogCapture(monkeypatch)

    async def unreachable(*args: Any) -> Any:
        raise error

    monkeypatch.setattr(hotpath, target, unreachable)
    r = await inst.client.request(method, path, headers=mitra.headers)

    assert_error(r, 503, "database_unavailable")
    assert r.headers["retry-after"] == "1"
    assert r.content == as_starlette_would_send(r.json())
    [entry] = [e for e in logs.entries() if e["event"] == "postgres_unreachable_unwrapped"]
    assert entry["error"] == type(error).__name__


# -- everything else is FastAPI's ----------------------------------------------------


async def test_other_paths_still_reach_fastapi(inst: Instance) -> None:
    r = await inst.client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    mitra = await online_mitra(inst)
    r = await inst.client.get("/api/mitra/status", headers=mitra.headers)
    assert r.status_code == 200 and r.json()["is_online"] is True
    for path in (f"{HEARTBEAT}/extra", f"{BEACON}/extra", "/api/mitra/status/heartbeats"):
        assert_error(await inst.client.post(path, headers=mitra.headers), 404, "not_found")
    # The document lists the hot path too, added by api/openapi.py.
    r = await inst.client.get("/openapi.json")
    assert r.status_code == 200
    assert {HEARTBEAT, BEACON, "/healthz"} <= set(r.json()["paths"])


async def test_the_hot_path_answers_without_fastapis_middleware(
    inst: Instance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The point of the hot path: FastAPI's stack never sees these two requests."""
    seen: list[str] = []
    stack = inst.app.build_middleware_stack()

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["path"])
        await stack(scope, receive, send)

    monkeypatch.setattr(inst.app, "middleware_stack", watched)
    mitra = await online_mitra(inst)  # through FastAPI
    assert (await inst.client.post(HEARTBEAT, headers=mitra.headers)).status_code == 200
    assert (await inst.client.get(BEACON)).status_code == 200
    assert (await inst.client.get("/healthz")).status_code == 200
    assert seen == ["/api/mitra/status/online", "/healthz"]


async def test_heartbeat_answers_json_as_starlette_would(inst: Instance) -> None:
    mitra = await online_mitra(inst)
    now = inst.clock.advance(5)
    r: httpx.Response = await inst.client.post(HEARTBEAT, headers=mitra.headers)
    assert_heartbeat_answer(inst, r, now)
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-length"] == str(len(r.content))
    assert "cache-control" not in r.headers
