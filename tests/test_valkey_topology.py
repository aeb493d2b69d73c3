"""The connection factory with Sentinels (valkey/topology.py; not under tests/valkey/, whose
name would shadow the valkey package for import sorting): what each client is built
with, before any connection is made (tests/topology/test_sentinel*.py run it against real
Sentinels)."""

from __future__ import annotations

from typing import Any

import valkey.asyncio as valkey_async
from valkey.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from valkey.utils import LIBVALKEY_AVAILABLE

from halobestie.config import load_settings
from halobestie.valkey.client import connect
from halobestie.valkey.topology import ValkeyEndpoint, endpoint

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


def test_the_endpoint_is_what_the_settings_say() -> None:
    settings = load_settings(
        DATABASE_URL="postgresql://db/halobestie",
        VALKEY_URL="valkeys://:pw@ignored:6379/0",
        JWT_SECRET="a-real-production-jwt-secret-0123456789",
        PAYMENT_WEBHOOK_SECRET="a-real-webhook-secret-0123",
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
