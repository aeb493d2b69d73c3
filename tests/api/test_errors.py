"""api/errors.py's details for bodies the framework refuses before a route runs: each says
what is wrong with the body the client sent, not a generic "must be JSON in UTF-8"."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Instance

LOGIN = b'{"email": "a@example.com", "password": "password123"}'


def detail_of(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert isinstance(body["detail"], str)
    return body["detail"]


async def post_login(inst: Instance, content: bytes, headers: dict[str, str]) -> httpx.Response:
    return await inst.client.post("/api/auth/login", content=content, headers=headers)


@pytest.mark.parametrize(
    ("headers", "named"),
    [
        (
            {"Content-Type": "application/x-www-form-urlencoded"},
            "application/x-www-form-urlencoded",
        ),
        ({"Content-Type": "text/plain"}, "text/plain"),
        ({}, "no Content-Type"),
    ],
    ids=["curl_d_default", "text_plain", "none"],
)
async def test_a_json_object_sent_without_a_json_content_type_is_told_to_send_one(
    inst: Instance, headers: dict[str, str], named: str
) -> None:
    # `curl -d '{...}'` sends application/x-www-form-urlencoded: the body is a JSON object,
    # so "Input should be a valid dictionary" would send the client looking in the wrong place.
    detail = detail_of(await post_login(inst, LOGIN, headers), 422, "invalid_request")
    assert "Content-Type: application/json" in detail and named in detail, detail


async def test_a_json_content_type_with_a_charset_or_suffix_is_parsed_as_json(
    inst: Instance,
) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        r = await post_login(inst, LOGIN, {"Content-Type": content_type})
        assert detail_of(r, 401, "invalid_credentials"), r.text


async def test_an_empty_body_without_a_content_type_still_says_it_is_missing(
    inst: Instance,
) -> None:
    detail = detail_of(await post_login(inst, b"", {}), 422, "invalid_request")
    assert detail == "body: Field required", detail


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b'{"email": 1' + b"0" * 5000 + b"}", "a number in it has too many digits"),
        (b"[" * 2000 + b"]" * 2000, "nested too deeply"),
        (b'{"email": "\xe9"}', "must be JSON in UTF-8"),
    ],
    ids=["5001_digit_number", "nested_2000_deep", "latin1"],
)
async def test_a_body_json_cannot_parse_says_why(inst: Instance, content: bytes, says: str) -> None:
    r = await post_login(inst, content, {"Content-Type": "application/json"})
    detail = detail_of(r, 400, "bad_request")
    assert says in detail, detail
