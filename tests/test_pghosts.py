"""DATABASE_URL naming several Postgres hosts (SPEC §8, pghosts.py): the list is checked at
startup with a message naming the bad entry; every connection goes to a host that accepts
writes, past hosts that refuse or are read-only; a write refused as read-only on a pooled
connection is a retryable 503 that retires the pool's connections. The failover itself (a
promoted streaming standby) is tests/topology/test_postgres_failover.py."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest
from pydantic import ValidationError

from halobestie.config import DatabaseSettings, describe_error
from halobestie.db import Database
from halobestie.errors import DatabaseUnavailable
from halobestie.pghosts import Host, asyncpg_dsn, check_database_url, connect, hosts_of
from tests.conftest import Servers
from tests.multi.processes import free_port
from tests.test_cli import halobestie


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("postgresql://u:p@h1:5432,h2:5433/db", [Host("h1", 5432), Host("h2", 5433)]),
        ("postgresql://u:p@h1,[::1]:6432/db", [Host("h1", None), Host("::1", 6432)]),
        ("postgresql://u@/db?host=a,b&port=5432", [Host("a", 5432), Host("b", 5432)]),
        ("postgresql://u@/db?host=/run/pg&port=5433", [Host("/run/pg", 5433)]),
        ("postgresql://h/db", [Host("h", None)]),
        ("postgresql:///db", []),
    ],
)
def test_hosts_are_read_from_the_netloc_or_the_query(url: str, hosts: list[Host]) -> None:
    assert hosts_of(url) == hosts


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("postgresql://u:p@h1:5432,/db", "empty host"),
        ("postgresql://u:p@h1:5432,,h2/db", "empty host"),
        ("postgresql://u:p@h1:54x2,h2:5432/db", "'h1:54x2' has a bad port"),
        ("postgresql://u:p@h1:5432,h2:70000/db", "'h2:70000' has a bad port"),
        ("postgresql://u:p@h1,[::1]x/db", "'[::1]x' is malformed"),
        ("postgresql://u@/db?host=a,b&port=1,2,3", "2 hosts but 3 ports"),
        ("postgresql://h1,h2/db?target_session_attrs=standby", "must be one of"),
    ],
)
def test_a_malformed_host_list_is_refused_at_startup_naming_the_entry(
    url: str, names: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValueError, match=re.escape(names)):
        check_database_url(url)
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(ValidationError) as caught:
        DatabaseSettings()  # type: ignore[call-arg]
    assert "DATABASE_URL" in describe_error(caught.value)
    assert names in describe_error(caught.value)


def test_several_hosts_require_a_writable_one_unless_the_url_chose() -> None:
    def target(url: str) -> list[str] | None:
        return parse_qs(urlsplit(asyncpg_dsn(url)).query).get("target_session_attrs")

    assert target("postgres://u:p@h1,h2/db") == ["read-write"]
    assert target("postgresql://u:p@h1,h2/db?sslmode=require") == ["read-write"]
    assert target("postgresql://u@/db?host=a,b") == ["read-write"]
    assert target("postgresql://u:p@h1,h2/db?target_session_attrs=primary") == ["primary"]
    assert target("postgresql://u:p@h1/db") is None  # one host: nothing to choose
    assert asyncpg_dsn("postgres://h/db") == "postgresql://h/db"


def with_hosts(url: str, hosts: list[Host]) -> str:
    """The test Postgres' URL (query form) naming `hosts` instead of its own one."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items() if k not in ("host", "port")}
    query["host"] = ",".join(h.host for h in hosts)
    query["port"] = ",".join(str(h.port) for h in hosts)
    text = "&".join(f"{k}={v}" for k, v in query.items())
    return parts._replace(query=text).geturl()


def own_host(servers: Servers) -> Host:
    [host] = hosts_of(servers.database_url)
    return Host(host.host, host.port or 5432)


async def test_a_host_that_refuses_is_passed_over_for_the_next(clean: Servers) -> None:
    dead = Host("127.0.0.1", free_port())
    dsn = asyncpg_dsn(with_hosts(clean.database_url, [dead, own_host(clean)]))
    for _ in range(2):  # the second time, the host that answered is tried first
        conn = await connect(dsn, timeout=5)
        try:
            assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
        finally:
            await conn.close()


async def test_read_only_hosts_are_refused_as_unreachable(clean: Servers) -> None:
    """A host reporting default_transaction_read_only (or in_hot_standby) is not writable:
    with only such hosts, connecting fails as the pool's 503 expects."""
    host = own_host(clean)
    dsn = asyncpg_dsn(with_hosts(clean.database_url, [host, host]))
    with pytest.raises(asyncpg.TargetServerAttributeNotMatched):
        await connect(dsn, timeout=5, server_settings={"default_transaction_read_only": "on"})


@pytest.fixture
async def db(clean: Servers) -> AsyncIterator[Database]:
    host = own_host(clean)
    database = Database(
        asyncpg_dsn(with_hosts(clean.database_url, [Host("127.0.0.1", free_port()), host])),
        pool_size=2,
        timeout=5,
    )
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def test_a_write_refused_as_read_only_is_unavailable_and_the_next_connection_writes(
    db: Database,
) -> None:
    """An old primary fenced read-only under an open pooled connection: the write fails
    (25006) as a retryable DatabaseUnavailable, and the pool's connections are retired."""
    with pytest.raises(DatabaseUnavailable):
        async with db.connection() as conn:
            await conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            await conn.execute("CREATE TEMP TABLE fenced (n int)")
    async with db.transaction() as conn:
        await conn.execute("CREATE TEMP TABLE writable (n int)")
        assert not await conn.fetchval("SELECT current_setting('transaction_read_only')::bool")


async def test_cli_commands_reach_the_writable_host_past_a_dead_one(
    clean: Servers, pg: asyncpg.Connection
) -> None:
    """`migrate` (alembic through pghosts.connect) and `create-admin` (the pool), with a
    host that refuses named first; and a refusal without a traceback when every host does."""
    url = with_hosts(clean.database_url, [Host("127.0.0.1", free_port()), own_host(clean)])
    migrated = await halobestie("migrate", database_url=url)
    assert migrated.code == 0, migrated
    created = await halobestie(
        "create-admin", "--email", "hosts@example.com", "--password", "a password",
        database_url=url,
    )  # fmt: skip
    assert created.code == 0, created
    assert await pg.fetchval("SELECT role FROM users WHERE email = 'hosts@example.com'") == "admin"

    dead = [Host("127.0.0.1", free_port()), Host("127.0.0.1", free_port())]
    refused = await halobestie("migrate", database_url=with_hosts(clean.database_url, dead))
    assert refused.code == 1, refused
    assert "cannot reach Postgres" in refused.err
    assert "Traceback" not in refused.err + refused.out
