"""The demo traffic (`halobestie dev --demo`) against a real server: it drives every flow
through the public API and WebSocket, and stops cleanly, leaving nobody online."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from halobestie.clock import SystemClock
from halobestie.simulator import DemoConfig, Simulation
from tests.conftest import TEST_WEBHOOK_SECRET, Servers, eventually
from tests.events.live import LiveFactory
from tests.factories import PASSWORD, make_user
from tests.multi.processes import free_port
from tests.simulator.helpers import FAST, SIM_EMAILS, simulation


async def test_the_demo_pairs_pays_extends_ends_sweeps_and_churns_through_the_api(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    wanted = (
        "mitra_online", "heartbeat", "accepted", "paid", "extended", "closed_ended",
        "deactivated", "reactivated", "mitra_saw_deactivation", "mitra_swept_offline",
        "messages_sent",
    )  # fmt: skip
    async with live_app(clock=SystemClock(), **FAST) as live, simulation(live) as sim:
        await eventually(lambda: all(sim.stats.get(k) for k in wanted), within=45)
        # What the server recorded, not what the simulator believes it did.
        paid = await pg.fetchval("SELECT count(*) FROM payments WHERE reference LIKE 'sim-%'")
        assert paid >= 1
        assert await pg.fetchval("SELECT count(*) FROM chat_messages") >= 1
        reasons = {r["reason"] for r in await pg.fetch("SELECT reason FROM chat_session_events")}
        assert {"offer accepted", "ended by the customer"} <= reasons
        assert any(r.startswith("extended by 1 minutes") for r in reasons), reasons
    # Stopped: nobody simulated is left online, deactivated or searching.
    rows = await pg.fetch(
        "SELECT m.is_online, m.is_active FROM mitras m JOIN users u USING (id)"
        " WHERE u.email LIKE $1",
        SIM_EMAILS,
    )
    assert len(rows) == 4
    assert not any(r["is_online"] for r in rows) and all(r["is_active"] for r in rows)
    assert await pg.fetchval("SELECT count(*) FROM pairing_requests WHERE status='searching'") == 0


async def test_a_second_run_finds_its_people_again(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    async with live_app(clock=SystemClock(), **FAST) as live:
        for _ in range(2):
            async with simulation(live, mitras=2, customers=1, churn=False) as sim:
                await eventually(lambda: sim.stats.get("heartbeat"), within=20)
    assert await pg.fetchval("SELECT count(*) FROM users WHERE email LIKE $1", SIM_EMAILS) == 3


async def test_the_demo_rides_out_a_server_that_is_not_there_and_stops_on_request() -> None:
    config = DemoConfig(
        base_url=f"http://127.0.0.1:{free_port()}",
        admin_email="admin@example.com",
        admin_password=PASSWORD,
        webhook_secret="x" * 16,
    )
    sim = Simulation(config)
    task = asyncio.create_task(sim.run())
    await asyncio.sleep(0.5)
    sim.stop()
    await asyncio.wait_for(task, 5)  # returns, does not raise
    assert not sim.started.is_set()


# --- the dev command -----------------------------------------------------------------------

EXE = Path(sys.executable).parent / "halobestie"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_dev_demo_stops_cleanly_on_a_signal(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, sig: signal.Signals
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "HALOBESTIE_"))}
    env.update(DATABASE_URL=clean.database_url, VALKEY_URL=clean.valkey_url, LOG_LEVEL="WARNING")
    proc = await asyncio.create_subprocess_exec(
        str(EXE), "dev", "--demo", "--demo-rate", "5", "--demo-mitras", "2",
        "--demo-customers", "1", "--port", str(free_port()), "--data-dir", str(tmp_path),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def sim_mitras_online() -> bool:
            return bool(
                await pg.fetchval(
                    "SELECT count(*) FROM mitras m JOIN users u USING (id)"
                    " WHERE u.email LIKE $1 AND m.is_online",
                    SIM_EMAILS,
                )
            )

        await eventually(sim_mitras_online, within=60)
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert "/admin" in out.decode()  # the banner names the console
    # The farewell reached the server before it shut down.
    assert not await sim_mitras_online()


# --- halobestie pay ------------------------------------------------------------------------


async def test_pay_sends_the_signed_webhook_and_reports_a_refusal_without_a_traceback(
    live_app: LiveFactory, pg: asyncpg.Connection
) -> None:
    async with live_app() as live:
        mitra = await make_user(live.ctx, "mitra")
        customer = await make_user(live.ctx, "customer")
        client = live.client
        r = await client.post("/api/mitra/status/online", headers=mitra.headers)
        assert r.status_code == 200, r.text
        r = await client.post(
            "/api/pairing/requests", json={"duration_minutes": 5}, headers=customer.headers
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            f"/api/pairing/requests/{r.json()['pairing_request']['id']}/accept",
            headers=mitra.headers,
        )
        assert r.status_code == 200, r.text
        session_id = r.json()["session"]["id"]
        base = ["pay", session_id, "--base-url", f"http://127.0.0.1:{live.port}"]

        wrong = await run(*base, "--secret", "not-the-secret-at-all")
        assert wrong.code == 1 and "invalid_signature" in wrong.err, wrong
        assert "Traceback" not in wrong.out + wrong.err
        paid = await run(*base, "--secret", TEST_WEBHOOK_SECRET, "--reference", "by-hand-1")
        assert paid.code == 0, paid
        assert f"session {session_id} is active until" in paid.out
    assert await pg.fetchval("SELECT reference FROM payments") == "by-hand-1"


@dataclass
class Run:
    code: int
    out: str
    err: str


async def run(*args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        str(EXE), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())
