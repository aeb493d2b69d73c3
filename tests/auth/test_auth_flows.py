"""Auth (SPEC §4): registration, login, refresh rotation, logout, token checks."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
import jwt
import pytest

from tests.conftest import (
    TEST_JWT_SECRET,
    TEST_WEBHOOK_SECRET,
    AppFactory,
    Instance,
    Servers,
    eventually,
)
from tests.factories import PASSWORD, Person, make_user

NEW_PASSWORD = "a brand new passphrase"


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "detail"}, body
    assert body["error"] == code, body


async def register(
    client: httpx.AsyncClient, email: str, password: str = NEW_PASSWORD, name: str = "Ana"
) -> httpx.Response:
    return await client.post(
        "/api/auth/register", json={"email": email, "password": password, "display_name": name}
    )


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/auth/login", json={"email": email, "password": password})


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/api/auth/refresh", json={"refresh_token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def mitra_status(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """A mitra endpoint that also checks the auth session is live (not revoked)."""
    return await client.get("/api/mitra/status", headers=bearer(token))


async def token_only_probe(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """A customer endpoint that checks the token only: 404 (unknown mitra) when it is good."""
    return await client.get(f"/api/mitras/{uuid4()}/availability", headers=bearer(token))


# --- register -----------------------------------------------------------------------------


async def test_register_returns_a_customer_and_a_working_token_pair(make_app: AppFactory) -> None:
    async with make_app(ACCESS_TOKEN_TTL_SECONDS=123) as inst:
        r = await register(inst.client, "ana@example.com", name="Ana Banana")
        assert r.status_code == 201, r.text
        body = r.json()
        assert set(body) == {"user", "access_token", "refresh_token", "token_type", "expires_in"}
        assert set(body["user"]) == {"id", "email", "display_name", "role"}
        assert body["user"]["email"] == "ana@example.com"
        assert body["user"]["display_name"] == "Ana Banana"
        assert body["user"]["role"] == "customer"
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == 123 == inst.ctx.settings.access_token_ttl_seconds
        claims = jwt.decode(body["access_token"], TEST_JWT_SECRET, algorithms=["HS256"])
        assert claims["sub"] == body["user"]["id"]
        assert claims["exp"] - claims["iat"] == 123
        assert_error(await token_only_probe(inst.client, body["access_token"]), 404, "not_found")
        r = await refresh(inst.client, body["refresh_token"])
        assert r.status_code == 200, r.text


async def test_register_stores_an_argon2id_hash_never_the_password(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    r = await register(inst.client, "hash@example.com")
    assert r.status_code == 201, r.text
    stored = await pg.fetchval("SELECT password_hash FROM users WHERE email = 'hash@example.com'")
    assert stored.startswith("$argon2id$")
    assert NEW_PASSWORD not in stored
    tokens = await pg.fetch("SELECT refresh_token_hash FROM auth_sessions")
    assert [t["refresh_token_hash"] for t in tokens] != [r.json()["refresh_token"]]
    assert r.json()["refresh_token"] not in tokens[0]["refresh_token_hash"]


@pytest.mark.parametrize("again", ["ana@example.com", "ANA@EXAMPLE.COM", "Ana@Example.com"])
async def test_register_refuses_a_taken_email_case_insensitively(
    inst: Instance, pg: asyncpg.Connection, again: str
) -> None:
    assert (await register(inst.client, "ana@example.com")).status_code == 201
    assert_error(await register(inst.client, again, name="Other"), 409, "email_taken")
    assert await pg.fetchval("SELECT count(*) FROM users") == 1


# --- login --------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["customer", "mitra", "admin"])
async def test_login_works_for_every_role(inst: Instance, role: str) -> None:
    person = await make_user(inst.ctx, role, email=f"Someone.{role}@Example.com")
    r = await login(inst.client, f"someone.{role}@example.com")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == person.user.public()
    assert body["user"]["role"] == role
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == inst.ctx.settings.access_token_ttl_seconds
    assert body["refresh_token"] != person.refresh_token


async def test_login_refuses_wrong_password_and_unknown_email_alike(inst: Instance) -> None:
    person = await make_user(inst.ctx, "customer")
    wrong = await login(inst.client, person.user.email, "not the password")
    unknown = await login(inst.client, "nobody@example.com")
    assert_error(wrong, 401, "invalid_credentials")
    assert_error(unknown, 401, "invalid_credentials")
    assert wrong.json() == unknown.json()


async def test_deactivated_mitra_cannot_log_in_but_a_wrong_password_reveals_nothing(
    inst: Instance,
) -> None:
    admin = await make_user(inst.ctx, "admin")
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.patch(
        f"/api/admin/mitras/{mitra.id}", json={"is_active": False}, headers=admin.headers
    )
    assert r.status_code == 200, r.text
    assert_error(await login(inst.client, mitra.user.email), 403, "account_deactivated")
    assert_error(await login(inst.client, mitra.user.email, "wrong!!!"), 401, "invalid_credentials")


# --- refresh ------------------------------------------------------------------------------


async def test_refresh_rotates_the_pair_and_the_old_refresh_token_stops_working(
    inst: Instance,
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    r = await refresh(inst.client, mitra.refresh_token)
    assert r.status_code == 200, r.text
    pair = r.json()
    assert pair["user"] == mitra.user.public()
    assert pair["refresh_token"] != mitra.refresh_token
    assert pair["expires_in"] == inst.ctx.settings.access_token_ttl_seconds
    claims = jwt.decode(pair["access_token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == (str(mitra.id), "mitra")
    assert (await mitra_status(inst.client, pair["access_token"])).status_code == 200
    r = await refresh(inst.client, pair["refresh_token"])
    assert r.status_code == 200, r.text


async def test_reusing_a_rotated_refresh_token_ends_that_auth_session(inst: Instance) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    other_login = (await login(inst.client, mitra.user.email)).json()
    first = (await refresh(inst.client, mitra.refresh_token)).json()
    newest = (await refresh(inst.client, first["refresh_token"])).json()
    # A token older than the one the latest rotation replaced, presented again (even
    # within the reuse leeway): theft is assumed, and the whole login ends.
    assert_error(await refresh(inst.client, mitra.refresh_token), 401, "invalid_token")
    assert_error(await refresh(inst.client, newest["refresh_token"]), 401, "invalid_token")
    assert_error(await mitra_status(inst.client, newest["access_token"]), 401, "invalid_token")
    # The same person's other login is a different auth session and keeps working.
    assert (await mitra_status(inst.client, other_login["access_token"])).status_code == 200
    assert (await refresh(inst.client, other_login["refresh_token"])).status_code == 200


async def test_twenty_concurrent_refreshes_of_one_token_get_one_pair_and_stay_logged_in(
    inst: Instance, pg: asyncpg.Connection
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    answers = await asyncio.gather(*(refresh(inst.client, mitra.refresh_token) for _ in range(20)))

    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers]
    pairs = {(r.json()["access_token"], r.json()["refresh_token"]) for r in answers}
    assert len(pairs) == 1, pairs
    ((access, refresh_token),) = pairs
    assert refresh_token != mitra.refresh_token
    assert await pg.fetchval("SELECT count(*) FROM auth_sessions WHERE revoked_at IS NULL") == 1
    assert (await mitra_status(inst.client, access)).status_code == 200
    assert (await refresh(inst.client, refresh_token)).status_code == 200


async def test_a_replay_at_the_end_of_the_reuse_leeway_answers_with_the_rotation_pair(
    make_app: AppFactory,
) -> None:
    async with make_app(REFRESH_REUSE_LEEWAY_SECONDS=10, ACCESS_TOKEN_TTL_SECONDS=60) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        rotated = (await refresh(inst.client, mitra.refresh_token)).json()
        inst.clock.advance(10)

        r = await refresh(inst.client, mitra.refresh_token)

        assert r.status_code == 200, r.text
        again = r.json()
        assert again["access_token"] == rotated["access_token"]
        assert again["refresh_token"] == rotated["refresh_token"]
        assert again["expires_in"] == 50  # what is left of that access token
        assert (await mitra_status(inst.client, again["access_token"])).status_code == 200
        # Answering the replay did not rotate again: the pair it gave still refreshes.
        r = await refresh(inst.client, again["refresh_token"])
        assert r.status_code == 200, r.text
        assert r.json()["refresh_token"] not in (again["refresh_token"], mitra.refresh_token)


@pytest.mark.parametrize(("leeway", "late_by"), [(10, 10.001), (0, 0.001)])
async def test_a_replay_after_the_reuse_leeway_ends_the_whole_login(
    make_app: AppFactory, pg: asyncpg.Connection, leeway: int, late_by: float
) -> None:
    async with make_app(REFRESH_REUSE_LEEWAY_SECONDS=leeway) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        rotated = (await refresh(inst.client, mitra.refresh_token)).json()
        inst.clock.advance(late_by)

        assert_error(await refresh(inst.client, mitra.refresh_token), 401, "invalid_token")

        assert_error(await refresh(inst.client, rotated["refresh_token"]), 401, "invalid_token")
        assert_error(await mitra_status(inst.client, rotated["access_token"]), 401, "invalid_token")
        reason = await pg.fetchval("SELECT revoked_reason FROM auth_sessions")
        assert reason == "refresh_reuse"


async def test_a_replay_within_the_leeway_is_refused_once_the_login_is_ended(
    inst: Instance,
) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    rotated = (await refresh(inst.client, mitra.refresh_token)).json()
    r = await inst.client.post("/api/auth/logout", headers=bearer(rotated["access_token"]))
    assert r.status_code == 204, r.text
    assert_error(await refresh(inst.client, mitra.refresh_token), 401, "invalid_token")


async def test_refresh_token_expires_after_its_ttl(make_app: AppFactory) -> None:
    async with make_app(REFRESH_TOKEN_TTL_SECONDS=5) as inst:
        early = await make_user(inst.ctx, "customer")
        late = await make_user(inst.ctx, "customer")
        inst.clock.advance(4)
        assert (await refresh(inst.client, early.refresh_token)).status_code == 200
        inst.clock.advance(2)
        assert_error(await refresh(inst.client, late.refresh_token), 401, "invalid_token")


@pytest.mark.parametrize(
    "token",
    ["garbage", "not-a-uuid.secret", f"{uuid4()}.", f"{uuid4()}.no-such-session"],
)
async def test_unknown_or_malformed_refresh_tokens_are_401(inst: Instance, token: str) -> None:
    assert_error(await refresh(inst.client, token), 401, "invalid_token")


async def test_a_forged_secret_on_a_real_session_id_ends_nothing_else(inst: Instance) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    session_id = mitra.refresh_token.split(".", 1)[0]
    assert_error(await refresh(inst.client, f"{session_id}.forged"), 401, "invalid_token")
    # Guessing a secret counts as reuse of that session: it is ended for safety.
    assert_error(await refresh(inst.client, mitra.refresh_token), 401, "invalid_token")


# --- logout -------------------------------------------------------------------------------


async def test_logout_revokes_only_this_auth_session(inst: Instance) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    other = (await login(inst.client, mitra.user.email)).json()
    r = await inst.client.post("/api/auth/logout", headers=mitra.headers)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_error(await mitra_status(inst.client, mitra.token), 401, "invalid_token")
    assert_error(await refresh(inst.client, mitra.refresh_token), 401, "invalid_token")
    assert_error(
        await inst.client.post("/api/auth/logout", headers=mitra.headers), 401, "invalid_token"
    )
    assert (await mitra_status(inst.client, other["access_token"])).status_code == 200
    assert (await refresh(inst.client, other["refresh_token"])).status_code == 200


async def test_logout_needs_a_token(inst: Instance) -> None:
    assert_error(await inst.client.post("/api/auth/logout"), 401, "invalid_token")


# --- access tokens ------------------------------------------------------------------------


async def test_access_token_expires_by_the_clock_and_refresh_renews_it(
    make_app: AppFactory,
) -> None:
    async with make_app(ACCESS_TOKEN_TTL_SECONDS=60) as inst:
        mitra = await make_user(inst.ctx, "mitra")
        inst.clock.advance(59)
        assert (await mitra_status(inst.client, mitra.token)).status_code == 200
        inst.clock.advance(1)
        assert_error(await mitra_status(inst.client, mitra.token), 401, "invalid_token")
        r = await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)
        assert_error(r, 401, "invalid_token")  # the lean hot path checks expiry too
        r = await refresh(inst.client, mitra.refresh_token)
        assert r.status_code == 200, r.text
        r2 = await mitra_status(inst.client, r.json()["access_token"])
        assert r2.status_code == 200, r2.text


def _claims(person: Person, **changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(person.token, TEST_JWT_SECRET, algorithms=["HS256"])
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _hs512(claims: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # the test secret is short for HS512; not the point here
        warnings.simplefilter("ignore")
        return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS512")


FORGERIES: dict[str, Any] = {
    "other_secret": lambda p: jwt.encode(_claims(p), "another-secret-0123456789abcdefghijk"),
    "alg_none": lambda p: jwt.encode(_claims(p), "", algorithm="none"),  # no key: ""
    "hs512_same_secret": lambda p: _hs512(_claims(p)),
    "role_escalated": lambda p: jwt.encode(_claims(p, role="admin"), "x" * 40),
    "unknown_role": lambda p: jwt.encode(_claims(p, role="root"), TEST_JWT_SECRET),
    "not_access_typ": lambda p: jwt.encode(_claims(p, typ="refresh"), TEST_JWT_SECRET),
    "no_session_id": lambda p: jwt.encode(_claims(p, sid=None), TEST_JWT_SECRET),
    "bad_subject": lambda p: jwt.encode(_claims(p, sub="nope"), TEST_JWT_SECRET),
    "tampered_payload": lambda p: p.token[:-4] + ("AAAA" if p.token[-4:] != "AAAA" else "BBBB"),
    "garbage": lambda p: "garbage",
    "three_dots": lambda p: "a.b.c",
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
async def test_forged_or_garbled_access_tokens_are_401(inst: Instance, forgery: str) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    token = FORGERIES[forgery](mitra)
    r = await mitra_status(inst.client, token)
    assert_error(r, 401, "invalid_token")
    assert r.headers["www-authenticate"] == "Bearer"
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=bearer(token))
    assert_error(r, 401, "invalid_token")


@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer   ", "Basic Zm9vOmJhcg==", "just-a-token"]
)
async def test_missing_or_malformed_authorization_header_is_401(
    inst: Instance, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert_error(await inst.client.get("/api/mitra/status", headers=headers), 401, "invalid_token")
    r = await inst.client.post("/api/mitra/status/heartbeat", headers=headers)
    assert_error(r, 401, "invalid_token")


async def test_the_bearer_scheme_is_case_insensitive(inst: Instance) -> None:
    mitra = await make_user(inst.ctx, "mitra")
    headers = {"Authorization": f"bearer {mitra.token}"}
    r = await inst.client.get("/api/mitra/status", headers=headers)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("role", "method", "path"),
    [
        ("customer", "GET", "/api/mitra/status"),
        ("customer", "POST", "/api/mitra/status/online"),
        ("customer", "POST", "/api/mitra/status/heartbeat"),
        ("admin", "POST", "/api/mitra/status/heartbeat"),
        ("mitra", "GET", "/api/admin/mitras"),
        ("customer", "GET", "/api/admin/dashboard"),
        ("mitra", "GET", "/api/mitras/{id}/availability"),
        ("admin", "GET", "/api/mitras/{id}/availability"),
    ],
)
async def test_a_valid_token_of_the_wrong_role_is_403(
    inst: Instance, role: str, method: str, path: str
) -> None:
    person = await make_user(inst.ctx, role)
    r = await inst.client.request(method, path.format(id=uuid4()), headers=person.headers)
    assert_error(r, 403, "forbidden")


# --- secrets never logged -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_passwords_and_tokens_never_reach_the_logs(clean: Servers) -> None:
    """A real `halobestie serve` at DEBUG level; everything it prints is searched."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": clean.database_url,
        "VALKEY_URL": clean.valkey_url,
        "JWT_SECRET": TEST_JWT_SECRET,
        "PAYMENT_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
        "HALOBESTIE_ENV": "test",
        "LOG_LEVEL": "DEBUG",
        "SWEEPS_ENABLED": "false",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "halobestie"), "serve", "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    secrets: list[str] = [NEW_PASSWORD, "wrong-password-that-is-secret", TEST_JWT_SECRET]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await eventually(lambda: _is_up(client), within=60)
            r = await register(client, "logged@example.com")
            assert r.status_code == 201, r.text
            secrets += [r.json()["access_token"], r.json()["refresh_token"]]
            r = await login(client, "logged@example.com", NEW_PASSWORD)
            assert r.status_code == 200, r.text
            secrets += [r.json()["access_token"], r.json()["refresh_token"]]
            wrong = await login(client, "logged@example.com", "wrong-password-that-is-secret")
            assert wrong.status_code == 401
            rotated = await refresh(client, r.json()["refresh_token"])
            assert rotated.status_code == 200
            secrets += [rotated.json()["access_token"], rotated.json()["refresh_token"]]
            # Within the reuse leeway, the replaced token answers with the same pair.
            replayed = await refresh(client, r.json()["refresh_token"])
            assert replayed.json()["refresh_token"] == rotated.json()["refresh_token"]
            twice = await refresh(client, rotated.json()["refresh_token"])
            assert twice.status_code == 200
            secrets += [twice.json()["access_token"], twice.json()["refresh_token"]]
            # A token older than the last one replaced is reuse, logged as a warning.
            assert (await refresh(client, r.json()["refresh_token"])).status_code == 401
            garbled = await client.get("/api/mitra/status", headers=bearer(secrets[3] + "x"))
            assert garbled.status_code == 401
    finally:
        proc.terminate()
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    logs = out.decode() + err.decode()
    assert "refresh_token_reuse" in logs, logs  # proves the capture sees the app's logs
    for secret in secrets:
        assert secret not in logs
    for token in secrets[3:]:
        assert token.rsplit(".", 1)[-1] not in logs  # not even the signature / secret part


async def _is_up(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False
