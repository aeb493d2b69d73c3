"""api/bodies.py: what a body accepts is what the account was created with."""

from __future__ import annotations

import pytest

from tests.conftest import Instance
from tests.factories import make_user


async def test_login_trims_the_email_as_registration_does(inst: Instance) -> None:
    typed = "  Spaced@Example.com "
    body = {"email": typed, "password": "password123", "display_name": "Spaced"}
    r = await inst.client.post("/api/auth/register", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["user"]["email"] == "Spaced@example.com"
    for email in (typed, "spaced@example.com", "\tSPACED@example.com\n"):
        r = await inst.client.post(
            "/api/auth/login", json={"email": email, "password": "password123"}
        )
        assert r.status_code == 200, (email, r.text)
    r = await inst.client.post("/api/auth/login", json={"email": "   ", "password": "x"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request", r.text


async def test_a_full_width_email_is_the_same_account_at_register_and_login(
    inst: Instance,
) -> None:
    """NFKC before lowercasing: U+FF41 (full-width a) is `a`, on both endpoints."""
    body = {"email": "ax@ex.com", "password": "password123", "display_name": "Ax"}
    r = await inst.client.post("/api/auth/register", json=body)
    assert r.status_code == 201, r.text
    user_id = r.json()["user"]["id"]
    for email in ("\uff41x@ex.com", "\uff21X@\uff45x.com", " \uff41x@ex.com "):
        again = {**body, "email": email}
        r = await inst.client.post("/api/auth/register", json=again)
        assert r.status_code == 409 and r.json()["error"] == "email_taken", (email, r.text)
        r = await inst.client.post(
            "/api/auth/login", json={"email": email, "password": "password123"}
        )
        assert r.status_code == 200, (email, r.text)
        assert r.json()["user"]["id"] == user_id


async def test_a_full_width_registration_is_stored_folded(inst: Instance) -> None:
    body = {"email": "\uff42y@ex.com", "password": "password123", "display_name": "By"}
    r = await inst.client.post("/api/auth/register", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["user"]["email"] == "by@ex.com"
    r = await inst.client.post(
        "/api/auth/login", json={"email": "by@ex.com", "password": "password123"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Ana\u202eevil", "U+202E"),  # right-to-left override
        ("\u200b\u200b", "U+200B"),  # zero-width spaces only
        ("\u200d", "U+200D"),  # zero-width joiner alone
        ("Ana\u200d", "U+200D"),  # a joiner at an edge joins nothing
        ("Ana\u200c\u200cB", "U+200C"),  # doubled
        ("Ana \u200dB", "U+200D"),  # beside a space
        ("Ana\u2066x", "U+2066"),  # bidi isolate
        ("\ufeffAna", "U+FEFF"),  # byte-order mark
        ("Ana\x07", "U+0007"),  # bell
        ("Ana\tBanana", "U+0009"),
        ("Ana\nBanana", "U+000A"),
        ("Ana\x85", "U+0085"),  # C1 control
        ("\ue000", "U+E000"),  # private use
        ("\U000f0000", "U+F0000"),  # supplementary private use
        ("\u3164", "visible"),  # Hangul filler: a letter that draws nothing
        ("\u2800 \u2800", "visible"),  # blank Braille patterns
        ("\u0301\u0301", "visible"),  # combining marks alone
        ("\u3000\u2003", "visible"),  # ideographic and em spaces
        ("   ", "visible"),
    ],
    ids=repr,
)
async def test_display_names_refuse_invisible_and_control_characters(
    inst: Instance, name: str, why: str
) -> None:
    body = {"email": "named@example.com", "password": "password123", "display_name": name}
    r = await inst.client.post("/api/auth/register", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    detail = r.json()["detail"]
    assert detail.startswith("display_name:") and why in detail, detail
    login = {"email": body["email"], "password": body["password"]}
    assert (await inst.client.post("/api/auth/login", json=login)).status_code == 401


@pytest.mark.parametrize(
    "name",
    [
        "Ana Banana",
        "  Zoë  ",
        "李小龍",
        "أحمد",
        "Ana 😀",
        "Ana\u0301",
        "O'Brien-Smith",
        "Priya \U0001f469\u200d\U0001f4bb",  # an emoji ZWJ sequence (woman technologist)
        "\u0915\u094d\u200d\u0937",  # Devanagari with ZWJ (a half-form conjunct)
        "\u0d28\u0d4d\u200c\u0d2e",  # Malayalam with ZWNJ between two letters
    ],
)
async def test_display_names_of_any_script_pass(inst: Instance, name: str) -> None:
    body = {"email": "script@example.com", "password": "password123", "display_name": name}
    r = await inst.client.post("/api/auth/register", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["user"]["display_name"] == name.strip()


async def test_an_admin_created_mitra_follows_the_same_rules(inst: Instance) -> None:
    admin = await make_user(inst.ctx, "admin")
    body = {"email": "\uff4dm@ex.com", "password": "password123", "display_name": "M\u202e"}
    r = await inst.client.post("/api/admin/mitras", json=body, headers=admin.headers)
    assert r.status_code == 422 and "display_name" in r.json()["detail"], r.text
    body["display_name"] = "Mitra"
    r = await inst.client.post("/api/admin/mitras", json=body, headers=admin.headers)
    assert r.status_code == 201, r.text
    r = await inst.client.post(
        "/api/auth/login", json={"email": "mm@ex.com", "password": "password123"}
    )
    assert r.status_code == 200, r.text
