"""The connection factory with Sentinels (valkey/topology.py; not under tests/valkey/, whose
name would shadow the valkey package for import sorting): what each client is built
with, before any connection is made (tests/topology/test_sentinel*.py run it against real
Sentinels)."""

from __future__ import annotations

from typing import Any

import pytest
import valkey.asyncio as valkey_async
from valkey.asyncio.connection import SSLConnection
from valkey.asyncio.sentinel import (
    MasterNotFoundError,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from valkey.exceptions import AuthenticationError
from valkey.utils import LIBVALKEY_AVAILABLE

from halobestie.config import Settings, load_settings
from halobestie.valkey.client import connect
from halobestie.valkey.topology import (
    SentinelAuthenticationError,
    ValkeyEndpoint,
    describe_failure,
    endpoint,
)

SENTINELS = (("sentinel-1", 26379), ("10.0.0.2", 26380))


async def test_the_sentinels_primary_gets_the_url_s_credentials_database_and_tls() -> None:
    target = ValkeyEndpoint("rediss://app:secret@ignored.example:1/3", SENTINELS, "cache")
    client: Any = connect(target, operation_timeout=0.25)
    try:
        pool = client.connection_pool
        assert pool.service_name == "cache" and pool.is_master
        options = pool.connection_kwargs
        assert (options["username"], options["password"], options["db"]) == ("app", "secret", 3)
        assert "host" not in options and "port" not in options
        assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.25
        assert options["decode_responses"] is True
        assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
        if LIBVALKEY_AVAILABLE:  # the C packer composes with Sentinel's connection class
            assert pool.connection_class.__name__ == "CPackedSentinelManagedSSLConnection"
        # The Sentinels: asked with the same timeout, without the primary's password.
        asked = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
        assert [(s["host"], s["port"]) for s in asked] == list(SENTINELS)
        assert all(s["socket_timeout"] == s["socket_connect_timeout"] == 0.25 for s in asked)
        assert all(s.get("password") is None for s in asked)
    finally:
        await client.aclose()


async def test_without_tls_the_primary_is_reached_over_plain_tcp() -> None:
    client: Any = connect(ValkeyEndpoint("redis://x:1/0", SENTINELS), operation_timeout=1)
    try:
        connection_class = client.connection_pool.connection_class
        assert issubclass(connection_class, SentinelManagedConnection)
        assert not issubclass(connection_class, SentinelManagedSSLConnection)
        assert client.connection_pool.service_name == "mymaster"
    finally:
        await client.aclose()


async def test_without_sentinels_the_url_names_the_server() -> None:
    client: Any = connect("redis://cache.example:6380/2", operation_timeout=1)
    try:
        assert type(client) is valkey_async.Valkey
        options = client.connection_pool.connection_kwargs
        assert (options["host"], options["port"], options["db"]) == ("cache.example", 6380, 2)
    finally:
        await client.aclose()


def production_settings(**overrides: str) -> Settings:
    """Settings as production reads them (real secrets, no dev defaults) plus `overrides`."""
    return load_settings(
        DATABASE_URL="postgresql://db/halobestie",
        JWT_SECRET="a-real-production-jwt-secret-0123456789",
        PAYMENT_WEBHOOK_SECRET="a-real-webhook-secret-0123",
        **overrides,
    )


def test_the_endpoint_is_what_the_settings_say() -> None:
    settings = production_settings(
        VALKEY_URL="valkeys://:pw@ignored:6379/0",
        VALKEY_SENTINELS="s1:26379,s2:26379",
        VALKEY_SENTINEL_MASTER="cache",
    )
    target = endpoint(settings)
    assert target.url == "rediss://:pw@ignored:6379/0"
    assert target.sentinels == (("s1", 26379), ("s2", 26379))
    assert target.sentinel_master == "cache"


async def test_a_url_without_a_host_is_enough_with_sentinels() -> None:
    client: Any = connect(ValkeyEndpoint("redis://:secret@/2", SENTINELS), operation_timeout=1)
    try:
        options = client.connection_pool.connection_kwargs
        assert (options["password"], options["db"]) == ("secret", 2)
    finally:
        await client.aclose()


# -- the Sentinels' own credentials and TLS (VALKEY_SENTINEL_*) ---------------------------


def sentinel_options(client: Any) -> list[dict[str, Any]]:
    return [
        s.connection_pool.connection_kwargs
        for s in client.connection_pool.sentinel_manager.sentinels
    ]


async def test_the_sentinels_are_asked_with_their_own_password_not_the_primary_s() -> None:
    target = ValkeyEndpoint(
        "redis://:primary-pw@/0", SENTINELS, sentinel_username="app", sentinel_password="s-pw"
    )
    client: Any = connect(target, operation_timeout=0.25)
    try:
        asked = sentinel_options(client)
        assert [(s["username"], s["password"]) for s in asked] == [("app", "s-pw")] * 2
        assert client.connection_pool.connection_kwargs["password"] == "primary-pw"
        assert "s-pw" not in repr(target)
    finally:
        await client.aclose()


async def test_sentinels_use_tls_when_the_url_does_with_its_ssl_options() -> None:
    url = "rediss://:pw@/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required"
    client: Any = connect(ValkeyEndpoint(url, SENTINELS), operation_timeout=1)
    try:
        for sentinel in client.connection_pool.sentinel_manager.sentinels:
            assert issubclass(sentinel.connection_pool.connection_class, SSLConnection)
        assert all(s["ssl_ca_certs"] == "/etc/ca.pem" for s in sentinel_options(client))
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("url", "sentinel_tls", "expected"),
    [
        ("rediss://:pw@/0", False, False),
        ("redis://:pw@/0", True, True),
        ("redis://:pw@/0", None, False),
    ],
)
async def test_sentinel_tls_says_otherwise_than_the_url(
    url: str, sentinel_tls: bool | None, expected: bool
) -> None:
    client: Any = connect(
        ValkeyEndpoint(url, SENTINELS, sentinel_tls=sentinel_tls), operation_timeout=1
    )
    try:
        for sentinel in client.connection_pool.sentinel_manager.sentinels:
            tls = issubclass(sentinel.connection_pool.connection_class, SSLConnection)
            assert tls is expected
    finally:
        await client.aclose()


def test_the_endpoint_carries_the_sentinels_credentials_and_tls() -> None:
    settings = production_settings(
        VALKEY_URL="redis://:pw@/0",
        VALKEY_SENTINELS="s1:26379",
        VALKEY_SENTINEL_USERNAME="app",
        VALKEY_SENTINEL_PASSWORD="s-secret",
        VALKEY_SENTINEL_TLS="true",
    )
    target = endpoint(settings)
    assert (target.sentinel_username, target.sentinel_password) == ("app", "s-secret")
    assert target.sentinel_tls is True
    assert "s-secret" not in repr(target) and "s-secret" not in repr(settings)


def test_a_refusal_is_described_as_authentication_without_the_secret() -> None:
    refused = SentinelAuthenticationError("the Sentinels refused authentication: ...")
    assert "Sentinels refused authentication" in describe_failure(refused)
    assert "VALKEY_SENTINEL_PASSWORD" in describe_failure(refused)
    assert "VALKEY_URL" in describe_failure(AuthenticationError("invalid password"))
    assert describe_failure(ConnectionError("refused")) == "Valkey unreachable"
    assert describe_failure(None) == "Valkey unreachable"


def test_tls_failures_are_described_as_such() -> None:
    """The real exceptions are checked end to end (tests/valkey/test_tls.py); here, the
    forms only a Sentinel topology gives: its errors as text inside MasterNotFoundError."""
    untrusted = MasterNotFoundError(
        "No master found for 'mymaster' : Sentinel<127.0.0.1:26379> - ConnectionError('Error 1"
        " connecting to 127.0.0.1:26379. [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify"
        " failed: unable to get local issuer certificate (_ssl.c:1006).')"
    )
    described = describe_failure(untrusted)
    assert described.startswith("Valkey's TLS certificate was not trusted"), described
    assert "unable to get local issuer certificate;" in described and "ssl_ca_certs" in described
    # A hang-up hints at TLS only when the URL is plaintext; refused stays unreachable.
    closed = ConnectionError("Connection closed by server.")
    assert "rediss://" in describe_failure(closed, tls=False)
    assert describe_failure(closed, tls=True) == "Valkey unreachable"
    assert describe_failure(ConnectionRefusedError(111, "refused"), tls=False) == (
        "Valkey unreachable"
    )


async def test_with_tls_to_the_sentinels_only_the_url_s_ssl_options_are_theirs() -> None:
    url = "redis://:pw@/0?ssl_ca_certs=/etc/ca.pem"  # config: only with VALKEY_SENTINEL_TLS
    client: Any = connect(ValkeyEndpoint(url, SENTINELS, sentinel_tls=True), operation_timeout=1)
    try:
        assert all(s["ssl_ca_certs"] == "/etc/ca.pem" for s in sentinel_options(client))
        primary = client.connection_pool
        assert not any(k.startswith("ssl_") for k in primary.connection_kwargs)
        assert not issubclass(primary.connection_class, SSLConnection)
    finally:
        await client.aclose()


def test_a_missing_tls_file_is_described_as_such() -> None:
    missing = ConnectionError("Error 2 connecting to 127.0.0.1:6380. No such file or directory.")
    assert "missing (ssl_ca_certs" in describe_failure(missing, tls=True)
    assert "missing (ssl_ca_certs" in describe_failure(FileNotFoundError(2, "no such file"))
