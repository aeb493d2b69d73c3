"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import pytest

from tests.conftest import Instance

REQUIRED_SERIES = [
    'halobestie_valkey_errors_total{operation="heartbeat"} 0.0',
    'halobestie_fallback_reads_total{reader="beacon"} 0.0',
    "halobestie_mirror_drift_healed_total 0.0",
    'halobestie_sweep_duration_seconds_count{sweep="auto_offline"} 0.0',
]


async def test_healthz_answers_without_touching_anything(inst: Instance) -> None:
    r = await inst.client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_reports_both_stores_ok_once_seeded(inst: Instance) -> None:
    r = await inst.client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"postgres": "ok", "valkey": "ok"}


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_head_like_get_without_a_body(inst: Instance, path: str) -> None:
    """Some load balancers probe with HEAD."""
    r = await inst.client.head(path)
    assert r.status_code == 200, r.text
    assert r.content == b""
    assert r.headers["content-type"] == "application/json"


@pytest.mark.parametrize("line", REQUIRED_SERIES)
async def test_metrics_expose_the_contract_series_from_the_start(inst: Instance, line: str) -> None:
    r = await inst.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert line in r.text.splitlines()


async def test_metrics_count_a_seed_per_startup(inst: Instance) -> None:
    r = await inst.client.get("/metrics")
    assert 'halobestie_mirror_seeds_total{reason="startup"} 1.0' in r.text.splitlines()
