"""Garbage in, a JSON 4xx out (SPEC §4): strict bodies, size limits, unknown routes.

Every error response is `{"error": ..., "detail": ...}` and nothing else, never a 500.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from halobestie.api.limits import MAX_BODY_BYTES
from tests.conftest import Instance
from tests.factories import make_user


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    role: str | None  # who may call it; None: anyone
    valid: dict[str, Any]  # a body that passes validation

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


USER_BODY = {"email": "fresh@example.com", "password": "12345678", "display_name": "Fresh"}
ENDPOINTS = [
    Endpoint("POST", "/api/auth/register", None, USER_BODY),
    Endpoint("POST", "/api/auth/login", None, {"email": "a@example.com", "password": "x"}),
    Endpoint("POST", "/api/auth/refresh", None, {"refresh_token": "x"}),
    Endpoint("POST", "/api/admin/mitras", "admin", USER_BODY),
    Endpoint("PATCH", "/api/admin/mitras/{mitra_id}", "admin", {"is_active": False}),
]
USER_ENDPOINTS = [e for e in ENDPOINTS if e.valid is USER_BODY]  # register, admin create


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]


class Caller:
    """Sends raw bodies to an endpoint with the right token and path filled in."""

    def __init__(self, inst: Instance, headers: dict[str, str], mitra_id: Any) -> None:
        self.inst = inst
        self.headers = headers
        self.mitra_id = mitra_id

    async def send(
        self, endpoint: Endpoint, content: Any, content_type: str | None = "application/json"
    ) -> httpx.Response:
        headers = dict(self.headers) if endpoint.role else {}
        if content_type:
            headers["Content-Type"] = content_type
        url = endpoint.path.format(mitra_id=self.mitra_id)
        return await self.inst.client.request(
            endpoint.method, url, content=content, headers=headers
        )

    async def send_json(self, endpoint: Endpoint, body: Any) -> httpx.Response:
        return await self.send(endpoint, json.dumps(body).encode())


@pytest.fixture
async def caller(inst: Instance) -> Caller:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    return Caller(inst, admin.headers, mitra.id)


endpoints = pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)


@endpoints
@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"email": ', "application/json"),
        (b"{'single': 'quotes'}", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b"[{}]", "application/json"),
        (b'"a string"', "application/json"),
        (b"42", "application/json"),
        (b"null", "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"email=a@example.com", "application/x-www-form-urlencoded"),
        (b'{"email": "a@example.com"}', "text/plain"),
    ],
    ids=["truncated", "single_quotes", "empty", "array", "array_of_object", "string",
         "number", "null", "binary", "form", "text_plain"],
)  # fmt: skip
async def test_a_body_that_is_not_a_json_object_is_422(
    caller: Caller, endpoint: Endpoint, content: bytes, content_type: str
) -> None:
    assert_error(await caller.send(endpoint, content, content_type), 422, "invalid_request")


WRONG_TYPES: dict[str, list[dict[str, Any]]] = {
    "/api/auth/register": [
        {"email": 123}, {"password": 12345678}, {"display_name": ["Fresh"]},
        {"email": None}, {"display_name": {"first": "F"}}, {"password": True},
    ],
    "/api/auth/login": [{"email": 123}, {"password": 12345678}, {"email": ["a@example.com"]}],
    "/api/auth/refresh": [{"refresh_token": 1}, {"refresh_token": None}, {"refresh_token": []}],
    "/api/admin/mitras": [{"email": 123}, {"password": 12345678}, {"display_name": 7}],
    "/api/admin/mitras/{mitra_id}": [
        {"is_active": "false"}, {"is_active": "true"}, {"is_active": 0}, {"is_active": 1},
        {"is_active": None}, {"is_active": "no"}, {"is_active": [False]},
    ],
}  # fmt: skip


@endpoints
async def test_wrong_types_are_422_without_coercion(
    caller: Caller, pg: asyncpg.Connection, endpoint: Endpoint
) -> None:
    for change in WRONG_TYPES[endpoint.path]:
        r = await caller.send_json(endpoint, endpoint.valid | change)
        assert_error(r, 422, "invalid_request")
        assert next(iter(change)) in r.json()["detail"]  # the detail names the field
    # Nothing was written: no new users, and the mitra is still active.
    assert await pg.fetchval("SELECT count(*) FROM users") == 2
    assert await pg.fetchval("SELECT bool_and(is_active) FROM mitras") is True


@endpoints
@pytest.mark.parametrize("extra", [{"role": "admin"}, {"is_active": False, "x": 1}, {"": None}])
async def test_unknown_fields_are_422(
    caller: Caller, pg: asyncpg.Connection, endpoint: Endpoint, extra: dict[str, Any]
) -> None:
    body = {**extra, **endpoint.valid}
    assert_error(await caller.send_json(endpoint, body), 422, "invalid_request")
    assert await pg.fetchval("SELECT count(*) FROM users WHERE role = 'admin'") == 1
    assert await pg.fetchval("SELECT count(*) FROM users") == 2


@endpoints
async def test_each_missing_field_is_422(caller: Caller, endpoint: Endpoint) -> None:
    for field in endpoint.valid:
        body = {k: v for k, v in endpoint.valid.items() if k != field}
        r = await caller.send_json(endpoint, body)
        assert_error(r, 422, "invalid_request")
        assert field in r.json()["detail"]
    assert_error(await caller.send_json(endpoint, {}), 422, "invalid_request")


def email_of_length(n: int) -> str:
    """A syntactically valid address of exactly n characters (n between 70 and 254+)."""
    local = "a" * 64
    domain_len = n - len(local) - 1 - len(".com")
    labels = []
    while domain_len > 0:
        take = min(63, domain_len)
        if domain_len - take == 1:  # never leave a lone dot with nothing after it
            take -= 1
        labels.append("b" * take)
        domain_len -= take + 1
    address = f"{local}@{'.'.join(labels)}.com"
    assert len(address) == n, (len(address), n)
    return address


LENGTH_CASES = [
    ("email", email_of_length(255), 422),
    ("email", email_of_length(254), 201),
    ("display_name", "", 422),
    ("display_name", "   ", 422),
    ("display_name", "n" * 81, 422),
    ("display_name", "n" * 80, 201),
    ("password", "p" * 7, 422),
    ("password", "p" * 8, 201),
    ("password", "p" * 128, 201),
    ("password", "p" * 129, 422),
]


@pytest.mark.parametrize("endpoint", USER_ENDPOINTS, ids=str)
@pytest.mark.parametrize(("field", "value", "status"), LENGTH_CASES, ids=lambda v: str(v)[:12])
async def test_length_limits_on_new_accounts(
    caller: Caller, endpoint: Endpoint, field: str, value: str, status: int
) -> None:
    r = await caller.send_json(endpoint, endpoint.valid | {field: value})
    if status == 422:
        assert_error(r, 422, "invalid_request")
        assert field in r.json()["detail"]
        if field == "password":
            assert value not in r.text  # a refused password is never echoed back
    else:
        assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "body",
    [{"email": email_of_length(255), "password": "x"}, {"email": "a@example.com", "password": ""},
     {"email": "", "password": "12345678"}, {"email": "a@example.com", "password": "p" * 129}],
    ids=["long_email", "empty_password", "empty_email", "long_password"],
)  # fmt: skip
async def test_login_refuses_out_of_range_fields_as_bad_input(
    inst: Instance, body: dict[str, str]
) -> None:
    assert_error(await inst.client.post("/api/auth/login", json=body), 422, "invalid_request")


@endpoints
@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
async def test_bodies_over_64_kib_are_413(
    caller: Caller, endpoint: Endpoint, chunked: bool
) -> None:
    payload = json.dumps(endpoint.valid | {"pad": "x" * MAX_BODY_BYTES}).encode()
    assert len(payload) > MAX_BODY_BYTES

    async def stream() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 4096):
            yield payload[start : start + 4096]

    r = await caller.send(endpoint, stream() if chunked else payload)
    if chunked:
        assert "content-length" not in r.request.headers
        assert r.request.headers["transfer-encoding"] == "chunked"
    assert_error(r, 413, "payload_too_large")


@endpoints
async def test_a_body_of_exactly_64_kib_is_not_refused_for_its_size(
    caller: Caller, endpoint: Endpoint
) -> None:
    body = endpoint.valid | {"pad": ""}
    pad = MAX_BODY_BYTES - len(json.dumps(body).encode())
    payload = json.dumps(endpoint.valid | {"pad": "x" * pad}).encode()
    assert len(payload) == MAX_BODY_BYTES
    # Past the size limit, it is judged on content: `pad` is an unknown field.
    assert_error(await caller.send(endpoint, payload), 422, "invalid_request")


async def test_a_lying_content_length_cannot_sneak_a_big_body_in(inst: Instance) -> None:
    """The limit counts what arrives, not what the header claims."""
    payload = b'{"refresh_token": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'

    async def stream() -> AsyncIterator[bytes]:
        yield payload

    r = await inst.client.post(
        "/api/auth/refresh",
        content=stream(),
        headers={"Content-Type": "application/json", "Content-Length": "10"},
    )
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize(
    "bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g", "0" * 33]
)
async def test_malformed_ids_in_paths_are_422(inst: Instance, bad_id: str) -> None:
    admin = await make_user(inst.ctx, "admin")
    customer = await make_user(inst.ctx, "customer")
    r = await inst.client.get(f"/api/mitras/{bad_id}/availability", headers=customer.headers)
    assert_error(r, 422, "invalid_request")
    r = await inst.client.patch(
        f"/api/admin/mitras/{bad_id}", json={"is_active": True}, headers=admin.headers
    )
    assert_error(r, 422, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/nope"), ("GET", "/api"), ("POST", "/api/auth"), ("GET", "/api/admin/mitras/x/y"),
     ("GET", "/api/mitras//availability"), ("DELETE", "/api/unknown/thing")],
)  # fmt: skip
async def test_unknown_routes_are_404_json(inst: Instance, method: str, path: str) -> None:
    assert_error(await inst.client.request(method, path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/auth/login"), ("PUT", "/api/auth/register"), ("DELETE", "/api/admin/mitras"),
     ("POST", "/api/admin/mitras/00000000-0000-0000-0000-000000000000"),
     ("GET", "/api/mitra/status/heartbeat"), ("POST", "/api/availability"),
     ("DELETE", "/api/mitra/status"), ("POST", "/healthz")],
)  # fmt: skip
async def test_wrong_methods_are_405_json(inst: Instance, method: str, path: str) -> None:
    r = await inst.client.request(method, path)
    assert_error(r, 405, "method_not_allowed")
    assert method not in r.headers["allow"]
