"""FaultProxy against real servers, plus the embedded servers it is meant to sit in front of."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from valkey.asyncio import Valkey
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

from halobestie.devservers.postgres import EmbeddedPostgres, sqlalchemy_url
from halobestie.devservers.valkey import EmbeddedValkey

from .proxy import FaultProxy
from .tls import make_certificates


@pytest.fixture(scope="module")
def valkey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data") as server:
        yield server


@pytest.fixture
async def proxy(valkey_server: EmbeddedValkey) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(("127.0.0.1", valkey_server.port)) as fault_proxy:
        yield fault_proxy


@contextlib.asynccontextmanager
async def valkey_client(port: int, socket_timeout: float = 1.0) -> AsyncIterator[Valkey]:
    # The client's defaults do not retry, so each command shows exactly what the proxy did.
    client = Valkey(
        host="127.0.0.1",
        port=port,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_forwards_traffic_and_counts_connections(proxy: FaultProxy) -> None:
    async with valkey_client(proxy.port) as client:
        assert await client.set("greeting", "hi")
        assert await client.get("greeting") == b"hi"
    assert proxy.connections_accepted == 1
    assert proxy.mode == "forward"


async def test_cut_drops_connections_and_refuses_new_ones(proxy: FaultProxy) -> None:
    async with valkey_client(proxy.port) as client:
        assert await client.ping()
        await proxy.cut()
        with pytest.raises(ValkeyConnectionError):
            await client.ping()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.restore()
        assert await client.ping()  # reconnects by itself, through the same port
    assert proxy.connections_accepted == 2  # the refused attempt never got in


async def test_blackhole_accepts_but_never_answers(proxy: FaultProxy) -> None:
    async with valkey_client(proxy.port, socket_timeout=0.3) as client:
        assert await client.ping()
        await proxy.blackhole()
        with pytest.raises(ValkeyTimeoutError):
            await client.ping()
        accepted = proxy.connections_accepted
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"PING\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(100), 0.3)
        assert proxy.connections_accepted == accepted + 1
        await proxy.restore()
        # The partition heals: the held request is delivered and answered late.
        assert await asyncio.wait_for(reader.read(100), 2) == b"+PONG\r\n"
        writer.close()
        await writer.wait_closed()
        assert await client.ping()


async def test_blackhole_after_cut_and_restore(proxy: FaultProxy) -> None:
    await proxy.cut()
    await proxy.blackhole()  # listening again, still silent
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"PING\r\n")
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), 0.2)
    await proxy.cut()  # drops the silent connection
    assert await asyncio.wait_for(reader.read(100), 2) == b""
    writer.close()
    await proxy.restore()
    async with valkey_client(proxy.port) as client:
        assert await client.ping()


async def test_tls_mode_terminates_tls_and_passes_the_server_s_close_on(
    valkey_server: EmbeddedValkey, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path)
    trusting = ssl.create_default_context(cafile=str(certs.ca_pem))
    other = ssl.create_default_context(cafile=str(certs.other_ca_pem))
    async with FaultProxy(("127.0.0.1", valkey_server.port), tls=certs.server) as tls_proxy:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tls_proxy.port, ssl=trusting, server_hostname="127.0.0.1"
        )
        try:
            writer.write(b"CLIENT SETNAME tls-through-proxy\r\nPING\r\n")
            assert await asyncio.wait_for(reader.readexactly(12), 5) == b"+OK\r\n+PONG\r\n"
            # The server hangs up on the proxy's plaintext side: the TLS client sees it.
            async with valkey_client(valkey_server.port) as admin:
                await admin.client_kill_filter(_type="normal")
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        finally:
            writer.close()
        # A client that does not trust the certificate, or speaks plaintext, gets nowhere.
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection(
                "127.0.0.1", tls_proxy.port, ssl=other, server_hostname="127.0.0.1"
            )
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_proxy.port)
        writer.write(b"PING\r\n")
        assert await asyncio.wait_for(reader.read(100), 5) == b""
        writer.close()


async def test_upstream_crash_closes_client_and_revival_is_empty(tmp_path: Path) -> None:
    with EmbeddedValkey(tmp_path / "valkey") as server:
        port, url = server.port, server.url
        async with FaultProxy(("127.0.0.1", port)) as fault_proxy:
            async with valkey_client(fault_proxy.port) as client:
                await client.set("k", "v")
                server.kill()
                assert not server.is_running()
                with pytest.raises(ValkeyConnectionError):
                    await client.get("k")
                # Proxy accepts, target refuses: the client sees a closed connection.
                with pytest.raises(ValkeyConnectionError):
                    await client.get("k")
                assert server.start() == url
                assert await client.get("k") is None
                await client.set("k", "v")
                assert server.restart_empty() == url and server.port == port
                with pytest.raises(ValkeyConnectionError):
                    await client.get("k")  # the old connection died with the old server
                assert await client.dbsize() == 0


async def test_postgres_through_unix_socket_target(postgres: EmbeddedPostgres) -> None:
    assert postgres.socket_path.is_socket()
    async with FaultProxy(postgres.socket_path) as fault_proxy:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=fault_proxy.port, user="postgres", database="postgres", ssl=False
        )
        try:
            assert await conn.fetchval("SELECT 1") == 1
            await fault_proxy.cut()
            # Which one depends on whether asyncpg already saw the close before the query.
            closed = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)
            with pytest.raises(closed):
                await conn.fetchval("SELECT 1")
        finally:
            conn.terminate()
        await fault_proxy.restore()
        conn = await asyncpg.connect(
            host="127.0.0.1", port=fault_proxy.port, user="postgres", database="postgres", ssl=False
        )
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()


async def test_postgres_urls_work_with_asyncpg_and_sqlalchemy(postgres: EmbeddedPostgres) -> None:
    url = postgres.create_database("proxy_test_db")
    try:
        assert url.startswith("postgresql://postgres@/proxy_test_db?host=/")
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SHOW max_connections") == "200"
        await conn.close()
        engine = create_async_engine(sqlalchemy_url(url))
        async with engine.connect() as sa_conn:
            name = (await sa_conn.execute(text("SELECT current_database()"))).scalar_one()
        await engine.dispose()
        assert name == "proxy_test_db"
        assert postgres.database_exists("proxy_test_db")
    finally:
        postgres.drop_database("proxy_test_db")
    assert not postgres.database_exists("proxy_test_db")
