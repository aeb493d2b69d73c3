"""Durable timers: how late does a timer fire? (issue 3)

One command: `.venv/bin/python benchmarks/timer_latency.py [--timers N] [--instances K]`

Starts its own Postgres and Valkey (embedded; or BENCH_DATABASE_URL / BENCH_VALKEY_URL,
whose data is wiped), runs K real app processes with TIMERS_ENABLED=true and the real
clock, and schedules payment timeouts of `pending_payment` sessions (the real handler:
lock, transition, history row, capacity after commit) at known due times, in two
scenarios:

* `prescheduled`: N timers written up front, due over a window a few seconds ahead:
  the runner sleeps until each earliest due time.
* `notify_woken`: timers written one by one, each due ~300 ms after it is written, while
  the runner is idle: it must be woken by the NOTIFY and recompute its deadline.
* `burst`: B timers all due at the same instant (e.g. a wave of offers expiring): the
  last one's latency is the time to fire them all.

Three latencies per timer, all from Postgres' point of view:

* `fired_at - due_at`: the `now` the runner fired it with (what `timers.fired_at` says);
* `marked - due_at`: `clock_timestamp()` when the row was marked fired (a bench-only
  trigger), i.e. when the firing transaction did the work;
* `visible - due_at`: wall clock here when the commit became visible (the same trigger
  sends a NOTIFY, delivered at commit, to this process).

Prints median / p95 / max per scenario and writes benchmarks/results/timer-latency-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

if __package__ in (None, ""):  # `python benchmarks/timer_latency.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import asyncpg

from halobestie.migrate import run_migrations
from halobestie.timers import schedule_timer

from .infra import REPO, Procs, app_env, cpu_model, load_average, start_servers

RESULTS = REPO / "benchmarks" / "results"
FIRED_CHANNEL = "bench_timer_fired"
SCENARIOS = ("prescheduled", "notify_woken", "burst")

TRIGGER_SQL = """
CREATE TABLE IF NOT EXISTS bench_timer_marks (
    timer_id bigint PRIMARY KEY, ref_id uuid NOT NULL, marked timestamptz NOT NULL
);
CREATE OR REPLACE FUNCTION bench_mark_timer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench_timer_marks VALUES (NEW.id, NEW.ref_id, clock_timestamp())
        ON CONFLICT (timer_id) DO NOTHING;
    PERFORM pg_notify('bench_timer_fired', NEW.ref_id::text);  -- FIRED_CHANNEL
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS bench_timer_fired ON timers;
CREATE TRIGGER bench_timer_fired AFTER UPDATE OF fired_at ON timers
    FOR EACH ROW WHEN (NEW.fired_at IS NOT NULL) EXECUTE FUNCTION bench_mark_timer();
"""


def log(msg: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {msg}", flush=True)


def summary(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p95_ms": round(p95, 1),
        "max_ms": round(ordered[-1], 1),
        "min_ms": round(ordered[0], 1),
    }


async def make_sessions(conn: asyncpg.Connection, count: int) -> list[UUID]:
    """`count` pending sessions, each with its own mitra, written in bulk."""
    tag = f"{time.time_ns()}"
    customer = await conn.fetchval(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " VALUES ($1, 'x', 'Bench customer', 'customer') RETURNING id",
        f"bench-timers-{tag}@example.com",
    )
    mitras = await conn.fetch(
        "INSERT INTO users (email, password_hash, display_name, role)"
        " SELECT 'bench-timers-' || $1 || '-' || g || '@example.com', 'x', 'M', 'mitra'"
        " FROM generate_series(1, $2) g RETURNING id",
        tag,
        count,
    )
    ids = [row["id"] for row in mitras]
    await conn.execute("INSERT INTO mitras (id) SELECT unnest($1::uuid[])", ids)
    rows = await conn.fetch(
        "INSERT INTO chat_sessions (customer_id, mitra_id, status, duration_minutes)"
        " SELECT $1, m, 'pending_payment', 30 FROM unnest($2::uuid[]) m RETURNING id",
        customer,
        ids,
    )
    return [row["id"] for row in rows]


class Observer:
    """Wall-clock time at which each timer's firing commit became visible here."""

    def __init__(self) -> None:
        self.visible: dict[str, float] = {}  # ref_id -> unix time
        self.done = asyncio.Event()
        self.expected: set[str] = set()

    def on_notify(self, *args: Any) -> None:
        payload = str(args[3])
        self.visible.setdefault(payload, time.time())
        if self.expected and self.expected <= self.visible.keys():
            self.done.set()

    def expect(self, ids: list[UUID]) -> None:
        self.expected = {str(i) for i in ids}
        self.done.clear()
        if self.expected <= self.visible.keys():
            self.done.set()


async def latencies(
    conn: asyncpg.Connection, observer: Observer, ids: list[UUID]
) -> dict[str, Any]:
    rows = await conn.fetch(
        "SELECT t.ref_id, t.due_at, t.fired_at, m.marked FROM timers t"
        " JOIN bench_timer_marks m ON m.timer_id = t.id WHERE t.ref_id = ANY($1::uuid[])",
        ids,
    )
    fired, marked, visible = [], [], []
    for row in rows:
        due = row["due_at"].timestamp()
        fired.append((row["fired_at"].timestamp() - due) * 1000)
        marked.append((row["marked"].timestamp() - due) * 1000)
        visible.append((observer.visible[str(row["ref_id"])] - due) * 1000)
    fires = await conn.fetchval(
        "SELECT count(*) FROM bench_timer_marks WHERE ref_id = ANY($1::uuid[])", ids
    )
    return {
        "timers": len(ids),
        "fired": len(rows),
        "fired_once": fires == len(ids),
        "fired_at_minus_due": summary(fired),
        "marked_minus_due": summary(marked),
        "visible_minus_due": summary(visible),
    }


async def prescheduled(
    conn: asyncpg.Connection, observer: Observer, count: int, window: float
) -> dict[str, Any]:
    ids = await make_sessions(conn, count)
    start = datetime.now(UTC) + timedelta(seconds=2)
    observer.expect(ids)
    async with conn.transaction():
        for n, session in enumerate(ids):
            due = start + timedelta(seconds=window * n / max(count - 1, 1))
            await schedule_timer(conn, "payment_timeout", session, due)
    await asyncio.wait_for(observer.done.wait(), window + 60)
    return await latencies(conn, observer, ids)


async def notify_woken(
    conn: asyncpg.Connection, observer: Observer, count: int, lead: float
) -> dict[str, Any]:
    ids = await make_sessions(conn, count)
    observer.expect(ids)
    for session in ids:
        await asyncio.sleep(random.uniform(0.05, 0.4))  # noqa: S311
        async with conn.transaction():
            due = datetime.now(UTC) + timedelta(seconds=lead)
            await schedule_timer(conn, "payment_timeout", session, due)
    await asyncio.wait_for(observer.done.wait(), 60)
    return await latencies(conn, observer, ids)


async def burst(conn: asyncpg.Connection, observer: Observer, count: int) -> dict[str, Any]:
    ids = await make_sessions(conn, count)
    due = datetime.now(UTC) + timedelta(seconds=2)
    observer.expect(ids)
    async with conn.transaction():
        for session in ids:
            await schedule_timer(conn, "payment_timeout", session, due)
    await asyncio.wait_for(observer.done.wait(), 120)
    return await latencies(conn, observer, ids)


async def measure(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    listener = await asyncpg.connect(database_url)
    observer = Observer()
    try:
        await conn.execute(TRIGGER_SQL)
        await listener.add_listener(FIRED_CHANNEL, observer.on_notify)
        log(f"prescheduled: {args.timers} timers due over {args.window}s")
        pre = await prescheduled(conn, observer, args.timers, args.window)
        log(f"notify_woken: {args.woken} timers, each due {args.lead}s after it is written")
        woken = await notify_woken(conn, observer, args.woken, args.lead)
        log(f"burst: {args.burst} timers due at the same instant")
        wave = await burst(conn, observer, args.burst)
        return {"prescheduled": pre, "notify_woken": woken, "burst": wave}
    finally:
        await listener.close()
        await conn.close()


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'scenario':<14} {'measure':<20} {'n':>5} {'median':>9} {'p95':>9} {'max':>9}")
    for scenario in SCENARIOS:
        r = results[scenario]
        for key in ("fired_at_minus_due", "marked_minus_due", "visible_minus_due"):
            s = r[key]
            print(
                f"{scenario:<14} {key:<20} {s['n']:>5} {s['median_ms']:>7.1f}ms"
                f" {s['p95_ms']:>7.1f}ms {s['max_ms']:>7.1f}ms"
            )
        print(f"{scenario:<14} every timer fired exactly once: {r['fired_once']}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timers", type=int, default=200, help="prescheduled timers")
    parser.add_argument("--window", type=float, default=5.0, help="seconds they spread over")
    parser.add_argument("--woken", type=int, default=40, help="notify-woken timers")
    parser.add_argument("--lead", type=float, default=0.3, help="due this long after writing")
    parser.add_argument("--burst", type=int, default=500, help="timers due at one instant")
    parser.add_argument("--instances", type=int, default=1, help="app processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="halobestie-timer-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log("starting Postgres and Valkey")
        servers = start_servers(tmp)
        procs = Procs(tmp)
        try:
            run_migrations(servers.database_url)
            asyncio.run(_wipe(servers.database_url))
            for n in range(args.instances):
                env = app_env(servers, mirror=True, app_name=f"bench-timers-{n}")
                env.update(TIMERS_ENABLED="true", HEARTBEAT_STALE_SECONDS="60")
                procs.engine(f"app{n}", env)
            log(f"{args.instances} instance(s) serving with TIMERS_ENABLED=true")
            results = asyncio.run(measure(servers.database_url, args))
        finally:
            procs.stop_all()
            servers.stop()

    report = {
        "at": datetime.now(UTC).isoformat(),
        "instances": args.instances,
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "load_average": load_average(),
        **results,
    }
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"timer-latency-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(report, indent=2))
    log(f"wrote {out.relative_to(REPO)}")


async def _wipe(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "TRUNCATE timers, payments, chat_session_events, pairing_offers, pairing_requests,"
            " chat_sessions, auth_sessions, mitras, users CASCADE"
        )
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
