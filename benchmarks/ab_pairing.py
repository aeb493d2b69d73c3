"""Before/after of the pairing blast (issue 8): opening pairing requests against two
source trees, side by side in one run, trials interleaved, on one set of servers and data.

    git worktree add /work/wt-before b7b34d8
    .venv/bin/python -m benchmarks.ab --pairing --base-src /work/wt-before/src [--quick]
        [--online 1000,10000,100000]

Four app processes per size, each served as `halobestie serve` serves it (sweeps and
timers off): the base tree's and this tree's, each with the Valkey path and with
VALKEY_MIRROR_ENABLED=false. The base tree's apps have a Valkey server of their own (a
second embedded one): each tree seeds and reads its own mirror, and the before tree's
whole-pool reads (100k entries per open at 100k online) do not load the Valkey that the
after tree's apps are measured on. Data as in the run (`dataset.grow_to`: 20 closed
sessions per mitra, load columns as the app keeps them; the schema is this tree's, which
the base tree's code reads without knowing the new columns). Per trial and app: open
latency, opens/s with 32 customers, a burst of 50 (`pairing_scale.trial` without the round
trips: the base tree's accept and end would not keep the load columns this tree's apps
read). Postgres statements per open at the smallest and largest size.

Target (issue 8): at 10k online, this tree's Valkey path opens >= 10x as many requests per
second as the base tree's Postgres-only path.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from halobestie.devservers.valkey import EmbeddedValkey
from halobestie.migrate import run_migrations

from . import dataset, inproc, pairing_costs, pairing_scale, report_pairing
from .infra import (
    BENCH_JWT_SECRET,
    REPO,
    SRC,
    CpuMeter,
    Proc,
    Procs,
    Servers,
    app_env,
    start_servers,
)
from .pgstats import StatementLog, logging_dsn

APPS = ("base_valkey", "new_valkey", "base_postgres", "new_postgres")
BEFORE = 10.0  # new Valkey path opens/s >= BEFORE x base Postgres-only path, at 10k


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


async def main(
    base_src: Path, sizes: list[int], plan: pairing_scale.ScalePlan, counted: int
) -> dict[str, Any]:
    new_src = SRC
    out: dict[str, Any] = {
        "base_src": str(base_src),
        "new_src": str(new_src),
        "plan": plan.__dict__,
        "sizes": {},
    }
    with tempfile.TemporaryDirectory(prefix="halobestie-ab-pairing-") as tmp:
        servers = start_servers(Path(tmp))
        base_valkey = EmbeddedValkey(Path(tmp) / "valkey-base")
        base_servers = Servers(
            servers.database_url, base_valkey.start(), servers.postgres, base_valkey
        )
        procs = Procs(Path(tmp))
        trees = {"base": (base_servers, base_src), "new": (servers, new_src)}
        try:
            url = servers.database_url
            await asyncio.to_thread(run_migrations, url)
            conn = await asyncpg.connect(url)
            try:
                await dataset.wipe(conn)
                wanted = max(plan.customers, plan.burst, counted)
                for size in sizes:
                    started = time.perf_counter()
                    await dataset.grow_to(conn, size, inproc.now())
                    sessions = int(await conn.fetchval("SELECT count(*) FROM chat_sessions"))
                    log(
                        f"{size:,} online, {sessions:,} chat sessions:"
                        f" built in {time.perf_counter() - started:.1f} s"
                    )
                    harness = inproc.Harness(url, servers.valkey_url, "bench-ab-pairing")
                    await harness.open()  # seeds this tree's mirror
                    await harness.close()
                    await dataset.ensure_customers(conn, wanted + 1, inproc.now())
                    customers = pairing_scale.Customers(
                        (
                            await dataset.tokens(
                                conn, "customer", BENCH_JWT_SECRET, inproc.now(), limit=wanted + 1
                            )
                        )[1:]
                    )
                    mitras = await pairing_scale.mitra_tokens(conn, BENCH_JWT_SECRET, inproc.now())
                    result = await _size(trees, procs, conn, customers, mitras, plan)
                    result["chat_sessions"] = sessions
                    if counted and size in (sizes[0], sizes[-1]):
                        result["statements"] = await _count(
                            servers, trees, procs, customers, counted
                        )
                    out["sizes"][str(size)] = result
            finally:
                await conn.close()
        finally:
            procs.stop_all()
            base_valkey.stop()
            servers.stop()
    return out


Trees = dict[str, tuple[Servers, Path]]


def _env(trees: Trees, name: str, database_url: str | None = None) -> dict[str, str]:
    servers, src = trees[name.split("_")[0]]
    env = app_env(
        servers,
        mirror=name.endswith("valkey"),
        app_name=f"bench-ab-{name}",
        database_url=database_url,
    )
    env["PYTHONPATH"] = str(src)
    return env


async def _size(
    trees: Trees,
    procs: Procs,
    conn: Any,
    customers: pairing_scale.Customers,
    mitras: pairing_scale.MitraTokens,
    plan: pairing_scale.ScalePlan,
) -> dict[str, Any]:
    running: dict[str, Proc] = {}
    try:
        for name in APPS:
            running[name] = procs.engine(f"ab-{name}", _env(trees, name))
        for name, proc in running.items():
            if name.endswith("valkey"):
                waited = await pairing_scale.wait_trusted(proc.base)
                if waited > 1:
                    log(f"  {name}: mirror trusted after {waited:.1f} s")
        return await pairing_scale.interleaved(
            {name: proc.base for name, proc in running.items()},
            customers,
            mitras,
            plan,
            conn=conn,
            log=log,
            round_trips=False,
            cpus={name: CpuMeter(trees[name.split("_")[0]][0]) for name in running},
            pids={name: proc.pid for name, proc in running.items()},
        )
    finally:
        for proc in running.values():
            procs.stop(proc)


async def _count(
    servers: Servers,
    trees: Trees,
    procs: Procs,
    customers: pairing_scale.Customers,
    counted: int,
) -> dict[str, Any]:
    if servers.pg_log is None:
        return {"method": "unavailable: needs the embedded Postgres' log file"}
    stmt_log = StatementLog(servers.pg_log, servers.database_url)
    await stmt_log.open()

    async def start(name: str) -> Proc:
        dsn = logging_dsn(servers.database_url, f"bench-ab-count-{name}")
        return procs.engine(f"ab-count-{name}", _env(trees, name, dsn))

    try:
        counts = await pairing_costs.statements_per_open(
            stmt_log, start, procs.stop, list(APPS), customers, counted
        )
    finally:
        await stmt_log.close()
    for name, c in counts.items():
        log(f"  {name}: {c['per_open']:.2f} statements per open {c['statuses']}")
    return counts


def markdown(out: dict[str, Any]) -> list[str]:
    sizes = sorted(int(s) for s in out["sizes"])
    lines = [
        f"Before: `{out['base_src']}`; after: `{out['new_src']}`. Medians of"
        f" {out['plan']['trials']} interleaved trials per app.",
        "",
        "| online | past sessions | app | open p50 ms | open p99 ms | opens/s (p50 ms),"
        f" {out['plan']['customers']} customers | CPU ms per open+cancel: app / Postgres /"
        f" Valkey | burst of {out['plan']['burst']} | statements per open |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    labels = {
        "base_valkey": "before, Valkey path",
        "base_postgres": "before, Postgres-only",
        "new_valkey": "after, Valkey path",
        "new_postgres": "after, Postgres-only",
    }
    for size in sizes:
        res = out["sizes"][str(size)]
        for name in ("base_valkey", "base_postgres", "new_valkey", "new_postgres"):
            trials = res[name]
            loaded = report_pairing.median([t["throughput"]["open"]["p50_ms"] for t in trials])
            st = res.get("statements", {}).get(name)
            per_open = "—" if st is None else f"{st['per_open']:.2f}"
            lines.append(
                f"| {size:,} | {res['chat_sessions']:,} | {labels[name]}"
                f" | {report_pairing.latency_p50(trials):,.1f}"
                f" | {report_pairing.latency_p99(trials):,.1f}"
                f" | {report_pairing.opens_per_s(trials):,.1f} ({loaded:,.0f})"
                f" | {report_pairing.cpu_cell(trials)}"
                f" | {_burst(trials)} | {per_open} |"
            )
    fell = report_pairing.fallbacks(out["sizes"])
    if fell:
        lines += [
            "",
            "**Reads served from Postgres because Valkey could not be used** (per"
            " trial): " + "; ".join(fell),
        ]
    return lines


def _burst(trials: list[dict[str, Any]]) -> str:
    b = trials[0]["burst"]
    created = report_pairing.burst_created(trials)
    statuses = "; ".join(f"{k} x{v}" for k, v in b["statuses"].items() if not k.startswith("201"))
    return (
        f"{created}/{b['requests']} x 201{f' ({statuses})' if statuses else ''}, last"
        f" {report_pairing.burst_last_ms(trials):,.0f} ms,"
        f" {report_pairing.burst_distinct(trials):.0f} mitras"
    )


def target(out: dict[str, Any]) -> dict[str, Any] | None:
    """The before tree's Postgres-only path gets its better figure: opens/s with 32
    customers (where its pool saturates) or with one (open, cancel, back to back)."""
    res = out["sizes"].get("10000")
    if res is None:
        return None
    new = report_pairing.opens_per_s(res["new_valkey"])
    crowd = report_pairing.opens_per_s(res["base_postgres"])
    alone = report_pairing.median([t["latency"]["opens_per_s"] for t in res["base_postgres"]])
    before = max(crowd, alone)
    ratio = new / before if before else float("inf")
    return {
        "target": "opens/s at 10k online: after, Valkey path vs before, Postgres-only path",
        "value": round(ratio, 1),
        "goal": f">= {BEFORE:g}x",
        "met": ratio >= BEFORE,
        "note": f"{new:.1f} vs {before:.1f} opens/s (before: {crowd:.1f} with"
        f" {out['plan']['customers']} customers, {alone:.1f} with one, opening and"
        " cancelling back to back)",
    }


def write_markdown(path: Path, out: dict[str, Any]) -> list[str]:
    md = markdown(out)
    t = out.get("target")
    if t is not None:
        met = "met" if t["met"] else "**missed**"
        md += ["", f"Target: {t['target']}: {t['value']}x ({t['goal']}): {met}; {t['note']}."]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    return md


def cli(base_src: Path, online: str, quick: bool) -> int:
    sizes = [int(s) for s in online.split(",")] if online else [1_000, 10_000, 100_000]
    plan = pairing_scale.ScalePlan.quick() if quick else pairing_scale.ScalePlan()
    started = time.perf_counter()
    out = asyncio.run(main(base_src.resolve(), sizes, plan, counted=10))
    out["duration_s"] = round(time.perf_counter() - started, 1)
    out["target"] = target(out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "benchmarks" / "results" / f"ab-pairing-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    md = write_markdown(path, out)
    print("\n".join(md))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":  # re-render the Markdown of a finished run from its JSON
    import sys

    results = Path(sys.argv[1])
    done = json.loads(results.read_text())
    done["target"] = target(done)
    print("\n".join(write_markdown(results, done)))
