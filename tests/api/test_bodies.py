"""api/bodies.py: what a body accepts is what the account was created with."""

from __future__ import annotations

from tests.conftest import Instance


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
