"""/openapi.json and /docs as a client developer meets them (issue 10 points 5 and 7).

Conformance of every answer to the document is tests/api/test_fuzz.py's job; these check
the document's own promises: typed answers, one error shape, the bearer scheme, the hot
path and the webhook listed, the docs page served without a CDN.
"""

from __future__ import annotations

from typing import Any

from halobestie.api.hotpath import BEACON_PATH, HEARTBEAT_PATH
from tests.conftest import Instance
from tests.factories import make_user

ERROR_REF = "#/components/schemas/ErrorBody"


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m, p, op) for p, item in doc["paths"].items() for m, op in item.items()]


async def test_every_answer_is_typed_and_every_error_is_the_error_body(inst: Instance) -> None:
    doc = (await inst.client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for method, path, op in operations(doc):
        for status, response in op["responses"].items():
            content = response.get("content", {})
            if status.startswith(("4", "5")) and path != "/readyz":
                assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, (path, status)
            elif status.startswith("2") and status != "204" and path != "/metrics":
                schema = content["application/json"]["schema"]
                assert "$ref" in schema, (method, path, status, schema)


async def test_token_routes_declare_the_bearer_scheme(inst: Instance) -> None:
    doc = (await inst.client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    ops = {(m, p): op for m, p, op in operations(doc)}
    for key in (("get", "/api/sessions/{session_id}"), ("post", HEARTBEAT_PATH)):
        assert ops[key]["security"] == [{"bearer": []}]
        assert {"401", "403"} <= set(ops[key]["responses"])
    for key in (("post", "/api/auth/login"), ("post", "/api/payments/webhook")):
        assert "security" not in ops[key]
    assert ("get", BEACON_PATH) in ops
    webhook = ops[("post", "/api/payments/webhook")]
    assert "X-Signature" in {p["name"] for p in webhook["parameters"]}
    assert "requestBody" in webhook


async def test_the_docs_page_loads_its_assets_from_the_app(inst: Instance) -> None:
    page = await inst.client.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text and "/docs/static/swagger-ui-bundle.js" in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        r = await inst.client.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000


async def test_malformed_json_says_what_and_where(inst: Instance) -> None:
    r = await inst.client.post(
        "/api/auth/login",
        content=b'{"email": "a@b.c",, }',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "not valid JSON" in detail and "character offset 18" in detail, detail


async def test_a_bad_webhook_signature_is_401_without_a_bearer_challenge(inst: Instance) -> None:
    r = await inst.client.post(
        "/api/payments/webhook", content=b"{}", headers={"X-Signature": "00"}
    )
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    assert "www-authenticate" not in r.headers
    customer = await make_user(inst.ctx, "customer")
    r = await inst.client.get("/api/mitra/status", headers=customer.headers)
    assert r.status_code == 403
    r = await inst.client.get("/api/mitra/status")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
