"""Shared fixtures and helpers for the failure tests: a FaultProxy in front of Valkey and/or
Postgres, and an app whose VALKEY_URL / DATABASE_URL point at the proxy, so a test can cut,
black-hole and restore either server under a running app.

Fixtures are defined as `*_fixture` functions with `name=`: a test module binds the
function at module level (`valkey_proxy_fixture = helpers.valkey_proxy_fixture`) and its
tests ask for the fixture by its short name, which shadows nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit
from uuid import UUID

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AppFactory, Instance, Servers
from tests.factories import Person, make_user
from tests.support.proxy import FaultProxy, Target

# -- where the real servers are --------------------------------------------------------


def valkey_target(servers: Servers) -> tuple[str, int]:
    parts = urlsplit(servers.valkey_url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def valkey_url_via(servers: Servers, proxy: FaultProxy) -> str:
    """The test Valkey URL (same database number), but through the proxy."""
    db = urlsplit(servers.valkey_url).path or "/0"
    return f"redis://127.0.0.1:{proxy.port}{db}"


def postgres_target(servers: Servers) -> Target:
    """pgserver listens on a unix socket only; a TEST_DATABASE_URL server may use TCP."""
    if servers.postgres is not None:
        return servers.postgres.socket_path
    parts = urlsplit(servers.database_url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["/var/run/postgresql"])[0]
    port = parts.port or int(query.get("port", ["5432"])[0])
    if host.startswith("/"):
        return Path(host) / f".s.PGSQL.{port}"
    return host, port


def postgres_url_via(servers: Servers, proxy: FaultProxy) -> str:
    """The test database, reached over TCP through the proxy (no TLS: the proxy is local)."""
    parts = urlsplit(servers.database_url)
    user = quote(parts.username or "postgres", safe="")
    password = f":{quote(parts.password, safe='')}" if parts.password else ""
    return f"postgresql://{user}{password}@127.0.0.1:{proxy.port}{parts.path}?sslmode=disable"


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(name="valkey_proxy")
async def valkey_proxy_fixture(clean: Servers) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the shared test Valkey. Cutting it never stops the server itself,
    so the other tests keep theirs."""
    async with FaultProxy(valkey_target(clean)) as proxy:
        yield proxy


@pytest.fixture(name="postgres_proxy")
async def postgres_proxy_fixture(clean: Servers) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(postgres_target(clean)) as proxy:
        yield proxy


@pytest.fixture(name="valkey_fault_app")
async def valkey_fault_app_fixture(
    make_app: AppFactory, clean: Servers, valkey_proxy: FaultProxy
) -> AsyncIterator[Instance]:
    """An app whose VALKEY_URL goes through `valkey_proxy` (Postgres direct)."""
    async with make_app(VALKEY_URL=valkey_url_via(clean, valkey_proxy)) as inst:
        try:
            yield inst
        finally:
            await valkey_proxy.restore()  # shut down against a live Valkey, not a hanging one


@pytest.fixture(name="postgres_fault_app")
async def postgres_fault_app_fixture(
    make_app: AppFactory, clean: Servers, postgres_proxy: FaultProxy
) -> AsyncIterator[Instance]:
    """An app whose DATABASE_URL goes through `postgres_proxy` (Valkey direct)."""
    async with make_app(DATABASE_URL=postgres_url_via(clean, postgres_proxy)) as inst:
        try:
            yield inst
        finally:
            await postgres_proxy.restore()


# -- people and state ------------------------------------------------------------------


async def online_mitra(inst: Instance) -> Person:
    """A new mitra who went online through the API (Postgres first, then the mirror)."""
    mitra = await make_user(inst.ctx, "mitra")
    r = await inst.client.post("/api/mitra/status/online", headers=mitra.headers)
    assert r.status_code == 200, r.text
    return mitra


async def heartbeat(inst: Instance, mitra: Person) -> httpx.Response:
    return await inst.client.post("/api/mitra/status/heartbeat", headers=mitra.headers)


async def availability_of(inst: Instance, customer: Person, mitra_id: UUID) -> dict[str, Any]:
    r = await inst.client.get(f"/api/mitras/{mitra_id}/availability", headers=customer.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def beacon(inst: Instance) -> dict[str, Any]:
    r = await inst.client.get("/api/availability")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def dashboard(inst: Instance, admin: Person) -> dict[str, Any]:
    r = await inst.client.get("/api/admin/dashboard", headers=admin.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def state_of(snapshot: dict[str, Any]) -> tuple[str, int]:
    """The beacon's answer without its timestamp."""
    return snapshot["state"], snapshot["available_count"]


# -- observing the app -----------------------------------------------------------------


async def metric_sum(inst: Instance, name: str, **labels: str) -> float:
    """Sum of a counter's samples as GET /metrics reports them (optionally one label set)."""
    r = await inst.client.get("/metrics")
    assert r.status_code == 200, r.text
    total = 0.0
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def valkey_errors(inst: Instance) -> float:
    return await metric_sum(inst, "halobestie_valkey_errors_total")


async def fallback_reads(inst: Instance, reader: str | None = None) -> float:
    labels = {"reader": reader} if reader else {}
    return await metric_sum(inst, "halobestie_fallback_reads_total", **labels)


def record_statuses(inst: Instance) -> list[tuple[str, int]]:
    """Every response the test client sees, as (path, status), to assert "no 5xx" /
    "no 500" over a whole test rather than request by request."""
    seen: list[tuple[str, int]] = []

    async def hook(response: httpx.Response) -> None:
        seen.append((response.request.url.path, response.status_code))

    hooks: list[Callable[..., Any]] = inst.client.event_hooks["response"]
    hooks.append(hook)
    inst.client.event_hooks["response"] = hooks
    return seen
