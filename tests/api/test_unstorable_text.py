"""Text Postgres cannot store is bad input (422 `invalid_request`), never a 5xx.

Postgres refuses NUL (U+0000) in `text`, and a lone surrogate (U+D800-U+DFFF alone) has
no UTF-8 encoding at all, so neither can reach the database, a password hash or a token
lookup: every text field refuses them up front, naming the field. Behind that, a
database error that is the client's fault (SQLSTATE class 22, data exception, or
asyncpg refusing to encode an argument) is answered 422, not 500 or 503.
"""

from __future__ import annotations

import json
from typing import Any, get_args

import asyncpg
import httpx
import pytest
from fastapi import Body
from pydantic import EmailStr

from halobestie.api.bodies import Strict, refuse_unstorable
from halobestie.api.deps import CtxDep
from tests.conftest import Instance
from tests.factories import PASSWORD, make_user
from tests.sessions.helpers import post_webhook

NUL = "\u0000"
SURROGATE = "\ud800"
USER_BODY = {"email": "fresh@example.com", "password": "12345678", "display_name": "Fresh"}


def assert_invalid(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == "invalid_request", body
    assert field in body["detail"], body


async def post(
    inst: Instance, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON that decodes to it.
    raw = json.dumps(body).encode()
    headers = {**(headers or {}), "Content-Type": "application/json"}
    return await inst.client.post(path, content=raw, headers=headers)


bad_chars = pytest.mark.parametrize("bad", [NUL, SURROGATE], ids=["nul", "lone_surrogate"])


@bad_chars
@pytest.mark.parametrize("field", ["email", "password"])
async def test_login_refuses_unstorable_text(inst: Instance, bad: str, field: str) -> None:
    await make_user(inst.ctx, "customer", email="known@example.com")
    body = {"email": "known@example.com", "password": PASSWORD}
    body[field] = body[field][:3] + bad + body[field][3:]
    assert_invalid(await post(inst, "/api/auth/login", body), field)


@bad_chars
@pytest.mark.parametrize("field", ["email", "password", "display_name"])
@pytest.mark.parametrize("path", ["/api/auth/register", "/api/admin/mitras"])
async def test_new_accounts_refuse_unstorable_text(
    inst: Instance, pg: asyncpg.Connection, bad: str, field: str, path: str
) -> None:
    admin = await make_user(inst.ctx, "admin")
    body = USER_BODY | {field: f"Fr{bad}esh" if field != "email" else f"fr{bad}esh@example.com"}
    r = await post(inst, path, body, admin.headers)
    assert_invalid(r, field)
    assert await pg.fetchval("SELECT count(*) FROM users") == 1  # only the admin


@bad_chars
async def test_refresh_refuses_unstorable_text(inst: Instance, bad: str) -> None:
    person = await make_user(inst.ctx, "customer")
    token = person.refresh_token[:5] + bad + person.refresh_token[5:]
    assert_invalid(await post(inst, "/api/auth/refresh", {"refresh_token": token}), "refresh_token")


@bad_chars
async def test_the_webhook_refuses_unstorable_text(inst: Instance, bad: str) -> None:
    body = {"session_id": "00000000-0000-0000-0000-000000000001", "reference": f"r{bad}"}
    r = await post_webhook(inst, json.dumps(body | {"status": "paid"}).encode())
    # The webhook's strict JSON parser refuses a lone surrogate as invalid JSON, before
    # it knows the field; NUL gets as far as the field.
    assert_invalid(r, "reference" if bad == NUL else "Invalid JSON")


@bad_chars
async def test_unstorable_text_in_a_field_name_is_still_a_json_422(
    inst: Instance, bad: str
) -> None:
    """The detail names the field; a name that cannot be encoded must not break the answer."""
    r = await post(inst, "/api/auth/login", {f"x{bad}": 1, "email": "a@b.co", "password": "x"})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    r = await post_webhook(inst, json.dumps({f"x{bad}": 1}).encode())
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"


async def test_characters_postgres_stores_are_accepted(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    """Only what cannot be stored is refused here: astral and non-characters pass. (Display
    names also refuse controls and format characters, a rule of their own: test_bodies.py.)"""
    name = "Bé\ufffe\uffff\U0001f600"
    r = await post(inst, "/api/auth/register", USER_BODY | {"display_name": name})
    assert r.status_code == 201, r.text
    assert await pg.fetchval("SELECT display_name FROM users") == name


@pytest.mark.parametrize(
    ("value", "sql"),
    [(NUL, "SELECT $1::text"), ("x", "SELECT $1::text::int"), ("99999", "SELECT $1::text::int2"),
     (SURROGATE, "SELECT $1::text")],
    ids=["nul_refused_by_postgres", "invalid_text_representation", "numeric_value_out_of_range",
         "argument_asyncpg_cannot_encode"],
)  # fmt: skip
async def test_a_data_error_from_postgres_is_422_not_a_5xx(
    inst: Instance, value: str, sql: str
) -> None:
    """The safety net behind the body types: an endpoint that forgot them still answers 4xx.

    The route is added to the real app for this test only and runs against the real
    Postgres, so the errors are the ones asyncpg and Postgres really raise.
    """

    async def echo(ctx: CtxDep, text: str = Body(embed=True)) -> dict[str, Any]:
        async with ctx.db.connection() as conn:
            return {"value": await conn.fetchval(sql, text)}

    inst.app.add_api_route("/test-only/echo", echo, methods=["POST"])
    r = await post(inst, "/test-only/echo", {"text": value})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    # The pool was not expired as if Postgres were down, and still answers.
    r = await post(inst, "/test-only/echo", {"text": "1"})
    assert r.status_code == 200, r.text


def _body_models() -> list[type[Strict]]:
    import halobestie.api.app  # noqa: F401  (imports every router, so every body model)

    found: list[type[Strict]] = []
    pending = list(Strict.__subclasses__())
    while pending:
        model = pending.pop()
        found.append(model)
        pending.extend(model.__subclasses__())
    return found


def test_every_text_field_of_every_body_refuses_unstorable_text() -> None:
    """New endpoints too: a text field must be a bodies.Text or carry bodies.Storable."""
    models = _body_models()
    assert {"RegisterBody", "LoginBody", "PaymentWebhookBody"} <= {m.__name__ for m in models}
    unguarded = []
    for model in models:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if annotation not in (str, EmailStr) and str not in get_args(annotation):
                continue
            if not any(getattr(m, "func", None) is refuse_unstorable for m in field.metadata):
                unguarded.append(f"{model.__name__}.{name}")
    assert not unguarded, f"text fields without bodies.Storable: {unguarded}"
