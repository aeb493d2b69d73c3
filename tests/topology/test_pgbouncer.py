"""Two instances behind PgBouncer in transaction mode (issue 12 point 3, SPEC §8).

DATABASE_URL goes through Debian's PgBouncer 1.18 (`pool_mode = transaction`) with
DATABASE_STATEMENT_CACHE_SIZE=0, DATABASE_DIRECT_URL straight to Postgres; the bounds are
the database's settings (what an operator sets behind a pooler). The main flows and every
sweep and timer of both instances run through it: no 5xx, each timer fired once, no
advisory lock left on PgBouncer's server connections, no prepared-statement errors. A
second test shows what breaks without those settings."""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from halobestie.auth.passwords import hash_password
from halobestie.db import Bounds, Database
from tests.conftest import Servers, eventually
from tests.multi.processes import (
    ServeProcess,
    cancellations,
    pending_sessions_with_payment_timeouts,
    serve_process,
)
from tests.sessions.helpers import sign, webhook_body
from tests.topology.pgbouncer import PGBOUNCER, pgbouncer

pytestmark = pytest.mark.topology

PASSWORD = "pgbouncer horse battery staple"
# DATABASE_TIMEOUT_SECONDS=5 and the bounds that follow from it (config.py).
BOUNDS = Bounds(statement=4.0, lock=3.5, idle_in_transaction=2.0)
INSTANCE_ENV = {
    "DATABASE_STATEMENT_CACHE_SIZE": "0",
    "DATABASE_TIMEOUT_SECONDS": "5",
    "DATABASE_POOL_SIZE": "5",
    "SWEEPS_ENABLED": "true",
    "TIMERS_ENABLED": "true",
    "MITRA_AUTO_OFFLINE_SWEEP_SECONDS": "0.5",
    "HEARTBEAT_MIRROR_INTERVAL_SECONDS": "0.5",
    "VALKEY_ONLINE_MIRROR_SWEEP_SECONDS": "1",
    "HEARTBEAT_INTERVAL_SECONDS": "1",
    "HEARTBEAT_STALE_SECONDS": "5",
    "PAIRING_OFFER_TTL_SECONDS": "5",
    "PAYMENT_TIMEOUT_SECONDS": "5",
    # A 1-minute session warns 58 s before its end: 2 s after it starts.
    "SESSION_WARNING_SECONDS": "58",
    "LOG_LEVEL": "WARNING",
}
SWEEPS = ("auto_offline", "heartbeat_writeback", "reseed")
# What must never appear in an instance's log.
LOG_FAILURES = (
    "prepared statement",
    "unsupported startup parameter",
    "postgres_bounds_not_enforced",
    "sweep_failed",
    "sweep_skipped_postgres_down",
    "timer_loop_failed",
    "timer_listen_failed",
    "timer_failed",
    "Traceback",
)


@pytest.fixture
def pgbouncer_binary() -> Path:
    if not PGBOUNCER.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PGBOUNCER} missing (scripts/test installs it as root)")
        pytest.skip(f"{PGBOUNCER} missing: apt-get install pgbouncer")
    return PGBOUNCER


def database_of(url: str) -> str:
    return urlsplit(url).path.strip("/")


@asynccontextmanager
async def role_bounds(pg: asyncpg.Connection, database: str) -> AsyncIterator[None]:
    """The bounds as the database's defaults, what the operator sets behind a pooler
    (ALTER ROLE ... or ALTER DATABASE ... SET); reset afterwards."""
    settings = BOUNDS.settings_ms()
    for name, value in settings.items():
        await pg.execute(f"ALTER DATABASE \"{database}\" SET {name} = '{value}ms'")
    try:
        yield
    finally:
        for name in settings:
            await pg.execute(f'ALTER DATABASE "{database}" RESET {name}')


@asynccontextmanager
async def fire_log(pg: asyncpg.Connection) -> AsyncIterator[None]:
    """Records every firing of a timer: a write of `timers.fired_at`, or the deletion of
    a due `session_warning` row (its handler deletes the row it fires and arms the next,
    sessions/warnings.py). A timer fired twice shows two rows. Removed afterwards."""
    await pg.execute(
        """
        DROP TABLE IF EXISTS test_pgb_timer_fires CASCADE;
        CREATE TABLE test_pgb_timer_fires (timer_id bigint, kind text, ref_id uuid);
        CREATE OR REPLACE FUNCTION test_pgb_log_fire() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                INSERT INTO test_pgb_timer_fires VALUES (OLD.id, OLD.kind, OLD.ref_id);
                RETURN OLD;
            END IF;
            INSERT INTO test_pgb_timer_fires VALUES (NEW.id, NEW.kind, NEW.ref_id);
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_pgb_timer_fired AFTER UPDATE OF fired_at ON timers
            FOR EACH ROW WHEN (NEW.fired_at IS NOT NULL) EXECUTE FUNCTION test_pgb_log_fire();
        CREATE TRIGGER test_pgb_warning_fired AFTER DELETE ON timers FOR EACH ROW
            WHEN (OLD.kind = 'session_warning' AND OLD.fired_at IS NULL
                  AND OLD.due_at <= now())
            EXECUTE FUNCTION test_pgb_log_fire();
        """
    )
    try:
        yield
    finally:
        await pg.execute(
            "DROP TRIGGER IF EXISTS test_pgb_timer_fired ON timers;"
            " DROP TRIGGER IF EXISTS test_pgb_warning_fired ON timers;"
            " DROP FUNCTION IF EXISTS test_pgb_log_fire() CASCADE;"
            " DROP TABLE IF EXISTS test_pgb_timer_fires;"
        )


class Client:
    """HTTP to either instance; every answer is recorded for the 5xx check."""

    def __init__(self, http: httpx.AsyncClient, instances: dict[str, ServeProcess]) -> None:
        self.http = http
        self.instances = instances
        self.answers: list[tuple[str, str, int]] = []

    async def call(self, at: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = await self.http.request(method, self.instances[at].url + path, **kwargs)
        self.answers.append((at, f"{method} {path}", r.status_code))
        return r

    async def ok(self, at: str, method: str, path: str, status: int = 200, **kw: Any) -> Any:
        r = await self.call(at, method, path, **kw)
        assert r.status_code == status, f"{method} {path} on {at}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    async def login(self, at: str, email: str) -> dict[str, str]:
        body = await self.ok(at, "POST", "/api/auth/login", json=_creds(email))
        return {"Authorization": f"Bearer {body['access_token']}"}


def _creds(email: str) -> dict[str, str]:
    return {"email": email, "password": PASSWORD}


async def metric_samples(client: Client, at: str) -> list[Any]:
    r = await client.call(at, "GET", "/metrics")
    assert r.status_code == 200
    return [s for f in text_string_to_metric_families(r.text) for s in f.samples]


async def sweeps_ran(client: Client, at: str, times: int) -> bool:
    samples = await metric_samples(client, at)
    runs = {
        s.labels["sweep"]: s.value
        for s in samples
        if s.name == "halobestie_sweep_duration_seconds_count"
    }
    seeds = sum(
        s.value
        for s in samples
        if s.name == "halobestie_mirror_seeds_total" and s.labels.get("reason") == "sweep"
    )
    return all(runs.get(name, 0) >= times for name in SWEEPS) and seeds >= 1


async def heartbeats(client: Client, headers: dict[str, str], stop: asyncio.Event) -> None:
    """A live mitra: a heartbeat every 0.5 s, alternating instances."""
    n = 0
    while not stop.is_set():
        await client.ok("ab"[n % 2], "POST", "/api/mitra/status/heartbeat", headers=headers)
        n += 1
        try:
            async with asyncio.timeout(0.5):
                await stop.wait()
        except TimeoutError:
            pass


async def accept_offer(client: Client, at: str, mitra: dict[str, str], request_id: str) -> str:
    """The mitra polls its offers until `request_id` shows, then accepts it."""

    async def offered() -> bool:
        offers = (await client.ok(at, "GET", "/api/mitra/offers", headers=mitra))["offers"]
        return any(o["request_id"] == request_id for o in offers)

    await eventually(offered, within=10)
    path = f"/api/pairing/requests/{request_id}/accept"
    session_id: str = (await client.ok(at, "POST", path, headers=mitra))["session"]["id"]
    return session_id


async def test_two_instances_run_the_main_flows_and_sweeps_through_pgbouncer_in_transaction_mode(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, pgbouncer_binary: Path
) -> None:
    database = database_of(clean.database_url)
    async with asyncio.timeout(240), AsyncExitStack() as stack:
        await stack.enter_async_context(role_bounds(pg, database))
        await stack.enter_async_context(fire_log(pg))
        bouncer = await stack.enter_async_context(pgbouncer(clean.database_url))
        env = {
            **INSTANCE_ENV,
            "DATABASE_URL": bouncer.url(database),
            "DATABASE_DIRECT_URL": clean.database_url,
        }
        async with AsyncExitStack() as apps:
            a, b = [
                await apps.enter_async_context(serve_process(clean, tmp_path, name, **env))
                for name in ("a", "b")
            ]
            await asyncio.gather(a.wait_serving(), b.wait_serving())
            http = await apps.enter_async_context(httpx.AsyncClient(timeout=15))
            client = Client(http, {"a": a, "b": b})
            await _main_flows(client, pg)
            logs = {name: inst.log for name, inst in (("a", a), ("b", b))}
        # The apps are gone; PgBouncer keeps its server connections: a session-level
        # lock taken through it would still be held by one of them.
        leaked = await pg.fetch(
            "SELECT l.pid, l.objid, a.application_name FROM pg_locks l"
            " JOIN pg_stat_activity a USING (pid) WHERE l.locktype = 'advisory'"
        )
        assert leaked == [], leaked
        servers = await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'",
            database,
        )
        assert servers > 0  # PgBouncer's, still open (the apps' own are gone)
        bouncer_log = bouncer.log.read_text(errors="replace")

    five_xx = [answer for answer in client.answers if answer[2] >= 500]
    assert five_xx == [], five_xx
    assert "login attempt: db=" + database in bouncer_log  # the apps came through it
    assert "unsupported startup parameter" not in bouncer_log
    for name, log in logs.items():
        text = log.read_text(errors="replace")
        found = [failure for failure in LOG_FAILURES if failure in text]
        assert found == [], f"instance {name}: {found}\n{text[-3000:]}"


async def _main_flows(client: Client, pg: asyncpg.Connection) -> None:
    started = datetime.now(UTC)
    # An admin (as `halobestie create-admin` writes one); everything else over HTTP.
    await pg.execute(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ('admin@pgb.example', $1, 'Admin', 'admin')",
        await hash_password(PASSWORD),
    )
    admin = await client.login("a", "admin@pgb.example")
    mitra_ids = []
    for n in range(3):
        body = {"email": f"mitra{n}@pgb.example", "password": PASSWORD, "display_name": "M"}
        created = await client.ok(
            "ab"[n % 2], "POST", "/api/admin/mitras", 201, json=body, headers=admin
        )
        mitra_ids.append(uuid.UUID(created["mitra"]["id"]))
    for n, at in enumerate(("a", "b")):
        body = {"email": f"customer{n}@pgb.example", "password": PASSWORD, "display_name": "C"}
        await client.ok(at, "POST", "/api/auth/register", 201, json=body)
    customers = [await client.login("b", f"customer{n}@pgb.example") for n in range(2)]
    mitras = [await client.login("ab"[n % 2], f"mitra{n}@pgb.example") for n in range(3)]

    # Mitras 0 and 1 online and heartbeating; mitra 2 online and then silent.
    for n, headers in enumerate(mitras):
        await client.ok("ab"[n % 2], "POST", "/api/mitra/status/online", headers=headers)
    stop = asyncio.Event()
    beating = [asyncio.create_task(heartbeats(client, h, stop)) for h in mitras[:2]]
    try:
        for at in ("a", "b"):
            r = await client.ok(at, "GET", "/api/availability")
            assert r["state"] in ("available", "offline"), r  # the snapshot may predate them

        # Pairing: open, offer, accept, pay -> active; its warning timer fires 2 s later.
        opened = await client.ok(
            "b",
            "POST",
            "/api/pairing/requests",
            201,
            json={"duration_minutes": 1},
            headers=customers[0],
        )
        paid_session = await accept_offer(client, "a", mitras[0], opened["pairing_request"]["id"])
        raw = webhook_body(paid_session, "pgb-ref-1")
        headers = {"content-type": "application/json", "x-signature": sign(raw)}
        await client.ok("b", "POST", "/api/payments/webhook", content=raw, headers=headers)
        got = await client.ok("a", "GET", f"/api/sessions/{paid_session}", headers=customers[0])
        assert got["session"]["status"] == "active"

        # Another accepted and never paid: its payment timeout cancels it.
        opened = await client.ok(
            "a",
            "POST",
            "/api/pairing/requests",
            201,
            json={"duration_minutes": 1},
            headers=customers[1],
        )
        unpaid_session = await accept_offer(client, "b", mitras[1], opened["pairing_request"]["id"])

        # Many timers due at once, raced by both instances' runners.
        due = datetime.now(UTC) + timedelta(seconds=1)
        batch = await pending_sessions_with_payment_timeouts(pg, 20, due)

        async def timers_fired() -> bool:
            warned = await pg.fetchval(
                "SELECT count(*) FROM test_pgb_timer_fires"
                " WHERE kind = 'session_warning' AND ref_id = $1",
                uuid.UUID(paid_session),
            )
            unfired = await pg.fetchval(
                "SELECT count(*) FROM timers WHERE fired_at IS NULL AND ref_id = ANY($1::uuid[])",
                [uuid.UUID(unpaid_session), *batch],
            )
            return bool(warned) and unfired == 0

        try:
            await eventually(timers_fired, within=20)
        except AssertionError:
            rows = await pg.fetch("SELECT kind, ref_id, due_at, fired_at FROM timers")
            raise AssertionError(f"timers not fired: {[tuple(r) for r in rows]}") from None
        sessions = [uuid.UUID(unpaid_session), *batch]
        assert set((await cancellations(pg, sessions)).values()) == {1}

        # The sweeps: the silent mitra goes offline (auto-offline), the live ones'
        # heartbeats reach Postgres (write-back), and each instance ran every sweep.
        async def swept() -> bool:
            rows = await pg.fetch(
                "SELECT id, is_online, last_heartbeat_at FROM mitras WHERE id = ANY($1::uuid[])",
                mitra_ids,
            )
            state = {row["id"]: row for row in rows}
            silent = state[mitra_ids[2]]
            live = [state[i] for i in mitra_ids[:2]]
            return not silent["is_online"] and all(
                r["is_online"] and r["last_heartbeat_at"] > started + timedelta(seconds=1)
                for r in live
            )

        await eventually(swept, within=20)
        for at in ("a", "b"):
            await eventually(functools.partial(sweeps_ran, client, at, 3), within=20)
    finally:
        stop.set()
        await asyncio.gather(*beating)

    fired_twice = await pg.fetch(
        "SELECT timer_id, kind, count(*) FROM test_pgb_timer_fires"
        " GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert fired_twice == [], fired_twice
    kinds = {row["kind"] for row in await pg.fetch("SELECT kind FROM test_pgb_timer_fires")}
    assert {"session_warning", "payment_timeout"} <= kinds, kinds

    # Logout on one instance ends the login on both.
    await client.ok("b", "POST", "/api/auth/logout", 204, headers=customers[0])
    for at in ("a", "b"):
        r = await client.call(at, "GET", f"/api/sessions/{paid_session}", headers=customers[0])
        assert r.status_code == 401, r.text


async def test_without_its_settings_the_app_breaks_behind_pgbouncer(
    clean: Servers, pg: asyncpg.Connection, tmp_path: Path, pgbouncer_binary: Path
) -> None:
    """What DATABASE_STATEMENT_CACHE_SIZE=0, the bounds moved to the role and the direct
    connection are for, one by one, on plain asyncpg connections through PgBouncer; and
    the warning of an instance whose role does not hold the bounds."""
    database = database_of(clean.database_url)
    async with asyncio.timeout(60), pgbouncer(clean.database_url) as bouncer:
        url = bouncer.url(database)
        # 1. The bounds as startup parameters (what the app sends to Postgres directly).
        with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
            await asyncpg.connect(url, server_settings=BOUNDS.server_settings())
        conn = await asyncpg.connect(url, server_settings=BOUNDS.server_settings(pooled=True))
        await conn.close()
        # ... and what an instance says then, DATABASE_DIRECT_URL unset.
        db = Database(url, pool_size=1, timeout=5, bounds=BOUNDS)
        with pytest.raises(RuntimeError, match="set DATABASE_DIRECT_URL"):
            await db.open()
        await db.close()

        # 2. A statement cached on one server connection, used again while another
        # client holds that connection in a transaction: PgBouncer sends it elsewhere.
        await _statement_cache(url, cache=100, fails=True)
        await _statement_cache(url, cache=0, fails=False)

        # 3. A session-level advisory lock taken and released in separate statements:
        # the unlock lands on another server connection, and the lock stays held.
        holder = await asyncpg.connect(url, statement_cache_size=0)
        other = await asyncpg.connect(url, statement_cache_size=0)
        try:
            assert await holder.fetchval("SELECT pg_try_advisory_lock(4242, 99)")
            busy = other.transaction()
            await busy.start()
            await other.execute("SELECT 1")
            assert not await holder.fetchval("SELECT pg_advisory_unlock(4242, 99)")
            await busy.rollback()
            assert (
                await advisory_locks(pg, 99) == 1
            )  # leaked to a server connection that other clients share
        finally:
            await holder.close()
            await other.close()

        # 4. An instance whose role holds no bounds starts, and says what to run.
        env = {"DATABASE_URL": url, "DATABASE_DIRECT_URL": clean.database_url}
        async with serve_process(clean, tmp_path, "unbounded", **env) as inst:
            await inst.wait_serving()
            log = inst.log.read_text(errors="replace")
        assert "postgres_bounds_not_enforced" in log, log
        assert "ALTER ROLE postgres SET statement_timeout = '4000ms';" in log, log

    # PgBouncer stopped: its server connections, and the leaked lock, are gone.
    async def released() -> bool:
        return await advisory_locks(pg, 99) == 0

    await eventually(released, within=10)


async def advisory_locks(pg: asyncpg.Connection, objid: int) -> int:
    count: int = await pg.fetchval(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", objid
    )
    return count


async def _statement_cache(url: str, *, cache: int, fails: bool) -> None:
    user = await asyncpg.connect(url, statement_cache_size=cache)
    other = await asyncpg.connect(url, statement_cache_size=0)
    try:
        assert await user.fetchval("SELECT $1::int + 1", 1) == 2
        busy = other.transaction()
        await busy.start()
        await other.execute("SELECT 1")  # holds the server connection `user` prepared on
        try:
            if fails:
                with pytest.raises(asyncpg.InvalidSQLStatementNameError, match="does not exist"):
                    await user.fetchval("SELECT $1::int + 1", 2)
            else:
                assert await user.fetchval("SELECT $1::int + 1", 2) == 3
        finally:
            await busy.rollback()
    finally:
        await user.close()
        await other.close()
