"""CORS (issue 12 point 6): CORS_ALLOWED_ORIGINS names the browser front ends on other
origins that may call the API; over real HTTP, on framework routes and on the hot path
(which answers before the framework), preflights and simple requests alike."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from halobestie.config import DEV_CORS_ALLOWED_ORIGINS, Settings, describe_error
from halobestie.settings_types import parse_origins
from tests.conftest import settings_for
from tests.events.live import LiveFactory, live_app_fixture
from tests.factories import make_user

__all__ = ["live_app_fixture"]

FRONT = "https://app.example.com"
OTHER = "https://evil.example.net"
# A framework route and the hot path's two, each with the method a browser would use.
ROUTES = [
    ("POST", "/api/mitra/status/online"),
    ("POST", "/api/mitra/status/heartbeat"),
    ("GET", "/api/availability"),
]


def settings(**overrides: str) -> Settings:
    urls = {"DATABASE_URL": "postgresql://db.internal/hb", "VALKEY_URL": "redis://cache:6379/0"}
    return settings_for(**urls, **overrides)


def preflight(origin: str, method: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_preflight_from_an_allowed_origin_is_answered(
    live_app: LiveFactory, method: str, path: str
) -> None:
    async with live_app(CORS_ALLOWED_ORIGINS=f"{FRONT},http://localhost:3000") as live:
        r = await live.client.options(path, headers=preflight(FRONT, method))
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == FRONT
    assert method in r.headers["access-control-allow-methods"].split(", ")
    allowed = {h.lower() for h in r.headers["access-control-allow-headers"].split(", ")}
    assert {"authorization", "content-type"} <= allowed
    assert "access-control-allow-credentials" not in r.headers  # bearer tokens, no cookies
    assert "Origin" in r.headers["vary"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_a_preflight_from_another_origin_gets_no_cors_headers(
    live_app: LiveFactory, method: str, path: str
) -> None:
    async with live_app(CORS_ALLOWED_ORIGINS=FRONT) as live:
        r = await live.client.options(path, headers=preflight(OTHER, method))
    assert r.status_code == 403, r.text
    assert r.json()["error"] == "cors_preflight_refused"
    assert "origin" in r.json()["detail"]
    assert cors_headers(r) == {}


async def test_requests_from_an_allowed_origin_carry_its_origin_and_others_get_nothing(
    live_app: LiveFactory,
) -> None:
    async with live_app(CORS_ALLOWED_ORIGINS=FRONT) as live:
        mitra = await make_user(live.ctx, "mitra")
        for origin, expected in ((FRONT, FRONT), (OTHER, None)):
            headers = {"Origin": origin, **mitra.headers}
            # A framework route, the hot path's heartbeat (both with the bearer token) and
            # the beacon: answered as for any client, with CORS headers for FRONT only.
            online = await live.client.post("/api/mitra/status/online", headers=headers)
            beat = await live.client.post("/api/mitra/status/heartbeat", headers=headers)
            beacon = await live.client.get("/api/availability", headers={"Origin": origin})
            for r in (online, beat, beacon):
                assert r.status_code == 200, r.text
                assert r.headers.get("access-control-allow-origin") == expected
                assert "Origin" in r.headers["vary"]
                if expected is None:
                    assert cors_headers(r) == {}
                else:  # a 503's Retry-After, a 401's challenge: readable by the page
                    exposed = r.headers["access-control-expose-headers"]
                    assert {"Retry-After", "WWW-Authenticate"} <= set(exposed.split(", "))
        # A client without an Origin (an app, curl) gets no CORS header; every answer
        # varies on Origin, so that a cache keeps them apart.
        r = await live.client.get("/api/availability")
        assert cors_headers(r) == {} and "Origin" in r.headers["vary"]
        # An error answer carries them too (the page can read why it was refused).
        r = await live.client.post("/api/mitra/status/heartbeat", headers={"Origin": FRONT})
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == FRONT


async def test_without_origins_no_cross_origin_caller_is_answered(live_app: LiveFactory) -> None:
    """The production default: preflights are not answered (405), no CORS header anywhere."""
    async with live_app() as live:
        assert live.ctx.settings.cors_allowed_origins == ()
        for method, path in ROUTES:
            r = await live.client.options(path, headers=preflight(FRONT, method))
            assert r.status_code == 405, (path, r.text)
            assert cors_headers(r) == {}
        r = await live.client.get("/api/availability", headers={"Origin": FRONT})
        assert r.status_code == 200
        assert cors_headers(r) == {}


# --- CORS_ALLOWED_ORIGINS ---------------------------------------------------------------


def test_origins_are_kept_as_a_browser_sends_them() -> None:
    value = " HTTPS://App.Example.com:443/, http://localhost:5173,http://[::1]:3000,http://x:80"
    assert parse_origins(value) == [
        "https://app.example.com",
        "http://localhost:5173",
        "http://[::1]:3000",
        "http://x",
    ]
    assert parse_origins("") == []
    assert settings(CORS_ALLOWED_ORIGINS=FRONT).cors_allowed_origins == (FRONT,)
    assert settings().cors_allowed_origins == ()
    dev = settings(CORS_ALLOWED_ORIGINS=DEV_CORS_ALLOWED_ORIGINS).cors_allowed_origins
    assert {"http://localhost:3000", "http://127.0.0.1:5173"} <= set(dev)


@pytest.mark.parametrize(
    "value",
    [
        "*",
        "https://*.example.com",
        "https://app.example.com/path",
        "app.example.com",
        "ftp://app.example.com",
        "https://user@app.example.com",
        "https://app.example.com:99999",
        "https://app.example.com?x=1",
        "https://app.example.com,null",
    ],
)
def test_a_malformed_origin_stops_startup_naming_the_variable(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        settings(CORS_ALLOWED_ORIGINS=value)
    assert describe_error(caught.value).count("\n") == 1  # this variable alone
    assert "CORS_ALLOWED_ORIGINS" in describe_error(caught.value)
