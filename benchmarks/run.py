"""halobestie benchmarks: is the hot path off Postgres, and fast? (issue 4)

One command: `./scripts/bench [--quick]` (or `.venv/bin/python -m benchmarks.run`).

Starts its own Postgres and Valkey (embedded; or BENCH_DATABASE_URL / BENCH_VALKEY_URL,
whose data is wiped), seeds 1k, 10k and 100k online mitras in turn and measures, side by
side in the same run:

* the load generator's ceiling (wrk against a framework-less responder and a plain
  Starlette route), then the heartbeat: the bare Starlette + one Valkey command floor,
  the real app (Valkey path), the real app with VALKEY_MIRROR_ENABLED=false (the design
  before the mirror), interleaved trial by trial;
* Postgres statements per heartbeat and per cached beacon, counted from Postgres' log;
* the beacon: HTTP (cached snapshot), and in-process its three paths (cached, computed
  from Valkey, Postgres fallback) at each size;
* find-available, Valkey against Postgres, at each size;
* at 100k online: the auto-offline sweep, the heartbeat write-back (duration and
  statements per cycle), the full reseed; Valkey memory per online mitra;
* pairing at each size, every mitra with 20 closed sessions of history, Valkey path
  against Postgres-only path, interleaved (`pairing_scale.py`): open latency, opens per
  second and request -> accept -> end round trips per second with 32 customers, a burst
  of 50 simultaneous opens; Postgres statements per open at the smallest and largest size.

Writes benchmarks/results/<timestamp>.json, <timestamp>.md and <timestamp>/*.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import asyncpg

from halobestie.availability.queries import find_available_mitras
from halobestie.availability.seed import seed_mirror
from halobestie.availability.sweeps import run_auto_offline, run_heartbeat_writeback
from halobestie.migrate import run_migrations

from . import (
    dataset,
    http_scenarios,
    inproc,
    loadgen,
    pairing_costs,
    pairing_scale,
    profiling,
    report,
    report_plots,
)
from .infra import (
    BENCH_JWT_SECRET,
    REPO,
    CpuMeter,
    Procs,
    Servers,
    app_env,
    cpu_model,
    load_average,
    start_servers,
)
from .pgstats import StatementLog, logging_dsn

RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Plan:
    quick: bool
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    trials: int = 5  # interleaved HTTP trials per target
    seconds: float = 6.0  # one wrk trial
    warmup: float = 2.0
    connections: int = 50
    beacon_trials: int = 3
    beacon_seconds: float = 4.0
    pairing: pairing_scale.ScalePlan = field(default_factory=pairing_scale.ScalePlan)
    sweep_trials: int = 5
    counted_requests: int = 500
    profile: bool = False  # py-spy flamegraphs of the heartbeat and of find-available
    # Closed sessions per mitra, for stages up to this size (larger: none); quick skips
    # the 100k stage's 1.8M rows.
    history_up_to: int = 10**9

    @classmethod
    def make(cls, quick: bool, profile: bool = False) -> Plan:
        if not quick:
            return cls(quick=False, profile=profile)
        return cls(
            quick=True,
            profile=profile,
            trials=2,
            seconds=2.0,
            warmup=1.0,
            beacon_trials=1,
            beacon_seconds=2.0,
            pairing=pairing_scale.ScalePlan.quick(),
            history_up_to=10_000,
            sweep_trials=2,
            counted_requests=200,
        )

    def iterations(self, size: int) -> int:
        full = {1_000: 30, 10_000: 20, 100_000: 7}
        quick = {1_000: 10, 10_000: 7, 100_000: 3}
        return (quick if self.quick else full).get(size, 5)


def log(msg: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],  # noqa: S607
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return rev + ("+dirty(src)" if dirty else "")
    except OSError:
        return "unknown"


@dataclass(frozen=True)
class Target:
    url: str
    method: str = "GET"
    tokens: Path | None = None
    pid: int | None = None  # the server process, for CPU accounting


class Bench:
    def __init__(
        self, plan: Plan, servers: Servers, procs: Procs, tmp: Path, out_dir: Path
    ) -> None:
        self.plan = plan
        self.out_dir = out_dir
        self.servers = servers
        self.procs = procs
        self.tmp = tmp
        self.cpu = CpuMeter(servers)
        self.wrk: str | None = None
        self.results: dict[str, Any] = {}

    # -- load generation ----------------------------------------------------------

    async def load(
        self, url: str, method: str, seconds: float, tokens: Path | None = None
    ) -> dict[str, Any]:
        if self.wrk is not None:
            result = await asyncio.to_thread(
                loadgen.run_wrk,
                self.wrk,
                url,
                method=method,
                duration=seconds,
                connections=self.plan.connections,
                tokens_file=tokens,
            )
        else:
            path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
            reqs = loadgen.requests_from_tokens(method, path, tokens) if tokens else None
            result = await loadgen.python_load(
                url,
                method=method,
                duration=seconds,
                connections=self.plan.connections,
                requests=reqs,
            )
        return result.as_dict()

    async def interleaved(
        self, targets: dict[str, Target], trials: int, seconds: float
    ) -> dict[str, list[dict[str, Any]]]:
        """Every target once per trial, the order rotating from trial to trial. Each
        trial also records the CPU time each process spent per request."""
        names = list(targets)
        for name in names:  # warm-up, not recorded
            t = targets[name]
            await self.load(t.url, t.method, self.plan.warmup, t.tokens)
        out: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for trial in range(trials):
            order = names[trial % len(names) :] + names[: trial % len(names)]
            for name in order:
                t = targets[name]
                cpu_before = self.cpu.snapshot(t.pid)
                children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                res = await self.load(t.url, t.method, seconds, t.tokens)
                children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = CpuMeter.per_request_us(cpu_before, self.cpu.snapshot(t.pid), res["requests"])
                if self.wrk is not None:
                    loadgen_s = (children_after.ru_utime + children_after.ru_stime) - (
                        children_before.ru_utime + children_before.ru_stime
                    )
                    cpu["loadgen"] = round(loadgen_s / max(1, res["requests"]) * 1e6, 1)
                res["cpu_us_per_request"] = cpu
                res["trial"] = trial
                res["load_average_1m"] = round(load_average()[0], 2)
                out[name].append(res)
                log(
                    f"  {name:<24} trial {trial + 1}/{trials}: {res['rps']:>9.0f} req/s"
                    f"  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  CPU us/req {cpu}"
                    + (f"  ERRORS {res['errors']}" if res["errors"] else "")
                )
        return out

    # -- the run -----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        # BENCH_LOADGEN=python forces the fallback (machines without apt-get, or to test it).
        if os.environ.get("BENCH_LOADGEN") == "python":
            self.wrk = None
        else:
            self.wrk = loadgen.ensure_wrk(log)
        self.results["loadgen"] = {
            "tool": "wrk" if self.wrk else "python",
            "version": loadgen.wrk_version(self.wrk) if self.wrk else "python fallback",
            "threads": 1,
            "connections": plan.connections,
        }
        if self.wrk is None:
            log("WARNING: wrk unavailable: using the Python load generator, which is itself")
            log("the bottleneck well below the servers' limits; treat req/s as lower bounds")

        url = self.servers.database_url
        await asyncio.to_thread(run_migrations, url)
        conn = await asyncpg.connect(url)
        vk = inproc.Harness(url, self.servers.valkey_url, "bench-harness")
        try:
            await dataset.wipe(conn)
            await vk.ctx.mirror.client.flushdb()
            baseline = await vk.ctx.mirror.client.info("memory")
            self.results["memory"] = {"baseline_used_memory": int(baseline["used_memory"])}
            await vk.open()
            await self._stages(conn, vk)
        finally:
            await vk.close()
            await conn.close()
        return self.results

    async def _grow(self, conn: Any, vk: inproc.Harness, size: int) -> None:
        started = time.perf_counter()
        history = dataset.HISTORY_PER_MITRA if size <= self.plan.history_up_to else 0
        await dataset.grow_to(conn, size, inproc.now(), history)
        pg_s = time.perf_counter() - started
        started = time.perf_counter()
        counts = await seed_mirror(vk.ctx, "bench")
        seed_s = time.perf_counter() - started
        log(
            f"stage {size:,} online: Postgres rows ({history} past sessions per new mitra)"
            f" in {pg_s:.1f} s, mirror seeded in {seed_s:.2f} s ({counts.online} online,"
            f" {counts.deactivated} deactivated)"
        )
        self.results.setdefault("stages", {})[str(size)] = {
            "history_per_new_mitra": history,
            "chat_sessions": int(await conn.fetchval("SELECT count(*) FROM chat_sessions")),
            "postgres_insert_s": pg_s,
            "seed_s": seed_s,
            "seed_counts": counts.as_dict(),
        }
        mem = await inproc.valkey_memory(vk)
        mem["per_online_mitra_vs_empty"] = (
            mem["used_memory"] - self.results["memory"]["baseline_used_memory"]
        ) / max(1, mem["online"])
        self.results["memory"][str(size)] = mem

    async def _stages(self, conn: Any, vk: inproc.Harness) -> None:
        plan = self.plan
        servers = self.servers
        first = plan.sizes[0]
        await self._grow(conn, vk, first)

        # The processes under test, started after the first stage so they seed it.
        log("starting the app (Valkey path), the app (Postgres-only path), the floor, raw")
        app_v = self.procs.engine(
            "app-valkey", app_env(servers, mirror=True, app_name="bench-app-valkey")
        )
        app_p = self.procs.engine(
            "app-postgres", app_env(servers, mirror=False, app_name="bench-app-pg")
        )
        # Sensitivity: the Postgres-only path with 5x the default pool (10).
        env_p50 = app_env(servers, mirror=False, app_name="bench-app-pg-pool50")
        env_p50["DATABASE_POOL_SIZE"] = "50"
        app_p50 = self.procs.engine("app-postgres-pool50", env_p50)
        floor = self.procs.floor(servers)
        raw = self.procs.raw()

        now = inproc.now()
        mitras = await dataset.tokens(conn, "mitra", BENCH_JWT_SECRET, now, limit=10**6)
        tokens_file = dataset.write_tokens_file(self.tmp / "mitra-tokens.txt", mitras)
        wanted = max(plan.pairing.customers, plan.pairing.burst, plan.pairing.counted_opens)
        await dataset.ensure_customers(conn, wanted + 1, now)
        customers = pairing_scale.Customers(
            # the first one holds the busy mitras' sessions
            (await dataset.tokens(conn, "customer", BENCH_JWT_SECRET, now, limit=wanted + 1))[1:]
        )

        # 1. load generator ceiling and heartbeat, interleaved
        log(f"heartbeat + load generator ceiling: {plan.trials} trials x {plan.seconds:.0f} s")
        hb = "/api/mitra/status/heartbeat"
        self.results["http"] = await self.interleaved(
            {
                "ceiling_raw": Target(raw.base + "/", pid=raw.pid),
                "ceiling_starlette_plain": Target(floor.base + "/plain", pid=floor.pid),
                "heartbeat_floor": Target(
                    floor.base + "/heartbeat", "POST", tokens_file, floor.pid
                ),
                "heartbeat_valkey": Target(app_v.base + hb, "POST", tokens_file, app_v.pid),
                "heartbeat_postgres": Target(app_p.base + hb, "POST", tokens_file, app_p.pid),
                "heartbeat_postgres_pool50": Target(
                    app_p50.base + hb, "POST", tokens_file, app_p50.pid
                ),
            },
            plan.trials,
            plan.seconds,
        )
        self.procs.stop(app_p50)
        if plan.profile:
            await self._profile_http(
                {"heartbeat-valkey": (app_v, hb), "heartbeat-postgres": (app_p, hb)}, tokens_file
            )

        # 2. statements per request, counted by Postgres
        log("Postgres statements per heartbeat / per beacon (server log)")
        self.results["statements"] = await self._count_requests(tokens_file)

        # 3. per size: beacon over HTTP, the beacon's paths and find-available in-process,
        # pairing at scale over HTTP
        for size in plan.sizes:
            if size != first:
                await self._grow(conn, vk, size)
            log(f"beacon over HTTP at {size:,} online")
            beacon_http = await self.interleaved(
                {
                    "beacon_valkey_app": Target(app_v.base + "/api/availability", pid=app_v.pid),
                    "beacon_postgres_app": Target(app_p.base + "/api/availability", pid=app_p.pid),
                },
                plan.beacon_trials,
                plan.beacon_seconds,
            )
            self.results.setdefault("beacon_http", {})[str(size)] = beacon_http
            n = plan.iterations(size)
            log(f"find-available and beacon paths in-process at {size:,} online ({n} iterations)")
            fa = await inproc.find_available(vk, n)
            self.results.setdefault("find_available", {})[str(size)] = fa
            bc = await inproc.beacon_paths(vk, n)
            self.results.setdefault("beacon", {})[str(size)] = bc
            if plan.profile and size == 10_000:
                await self._profile_find_available(vk)
            log(
                f"  find-available median: valkey {fa['valkey']['median_ms']:.2f} ms,"
                f" postgres {fa['postgres']['median_ms']:.2f} ms ({fa['available']} available,"
                f" paths agree: {fa['paths_agree']})"
            )
            log(
                f"  beacon median: cached {bc['cached']['median_ms']:.3f} ms, from valkey"
                f" {bc['valkey']['median_ms']:.2f} ms, postgres fallback"
                f" {bc['postgres']['median_ms']:.2f} ms"
            )
            await self._pairing(conn, vk, size, {"valkey": app_v, "postgres": app_p}, customers)

        # 4. sweeps at the largest size
        largest = plan.sizes[-1]
        log(f"sweeps at {largest:,} online: {plan.sweep_trials} trials")
        sw = await inproc.sweeps(vk, plan.sweep_trials, stale_share=0.01)
        log(
            f"  auto-offline median: steady {sw['auto_offline_steady']['median_ms']:.0f} ms,"
            f" with 1% stale {sw['auto_offline_stale']['median_ms']:.0f} ms;"
            f" write-back {sw['writeback']['median_ms']:.0f} ms ({sw['writeback_rows'][0]} rows);"
            f" reseed {sw['reseed']['median_ms']:.0f} ms"
        )
        sw["statements"] = await self._count_sweeps(vk)
        self.results["sweeps"] = sw
        mem = self.results["memory"]
        if len(plan.sizes) >= 2:
            a, b = str(plan.sizes[-2]), str(plan.sizes[-1])
            mem["per_online_mitra_marginal"] = (
                mem[b]["used_memory"] - mem[a]["used_memory"]
            ) / max(1, mem[b]["online"] - mem[a]["online"])
            mem["marginal_between"] = [int(a), int(b)]
        self.procs.stop_all()

    async def _pairing(
        self,
        conn: Any,
        vk: inproc.Harness,
        size: int,
        apps: dict[str, Any],
        customers: pairing_scale.Customers,
    ) -> None:
        """Pairing at this size, both paths interleaved; statements per open at the
        smallest and the largest size; py-spy of both apps opening at 10k (--profile)."""
        plan = self.plan.pairing
        log(f"pairing at {size:,} online: {plan.trials} interleaved trials per path")
        mitras = await pairing_scale.mitra_tokens(conn, BENCH_JWT_SECRET, inproc.now())
        await pairing_scale.wait_trusted(apps["valkey"].base)
        choose = await pairing_costs.choose_inprocess(vk, 50 if self.plan.quick else 200)
        log(
            f"  the choice in-process (median): Valkey path {choose['valkey']['median_ms']:.2f}"
            f" ms, Postgres-only path {choose['postgres']['median_ms']:.2f} ms"
        )

        async def reseed(name: str) -> None:
            if name == "postgres":  # its round trips changed sessions the mirror never saw
                await seed_mirror(vk.ctx, "bench")

        trials = await pairing_scale.interleaved(
            {name: proc.base for name, proc in apps.items()},
            customers,
            mitras,
            plan,
            conn=conn,
            log=log,
            after=reseed,
            cpus={name: self.cpu for name in apps},
            pids={name: proc.pid for name, proc in apps.items()},
        )
        stage = self.results["stages"][str(size)]
        result: dict[str, Any] = {
            "online": size,
            "chat_sessions": stage["chat_sessions"],
            "choose_inprocess": choose,
            **trials,
        }
        if size in (self.plan.sizes[0], self.plan.sizes[-1]):
            result["statements"] = await self._count_opens(customers)
        if self.plan.profile and size == 10_000:
            for name, proc in apps.items():
                seconds = max(4.0, plan.load_seconds)
                recording = self._recording(f"pairing-open-{name}-10k", proc.pid, seconds)
                if recording is None:
                    break
                await pairing_scale.open_throughput(
                    proc.base, customers.tokens[: plan.customers], seconds
                )
                svg = await asyncio.to_thread(recording.wait)
                self.results.setdefault("profiles", {})[f"pairing-open-{name}-10k"] = svg
                log(f"  profile pairing-open-{name}-10k: {svg}")
            await pairing_scale.tidy(conn)
        self.results.setdefault("pairing_scale", {})[str(size)] = result

    async def _count_opens(self, customers: pairing_scale.Customers) -> dict[str, Any]:
        """Postgres statements per open request, both paths, from Postgres' log."""
        servers = self.servers
        if servers.pg_log is None:
            return {"method": "unavailable: needs the embedded Postgres' log file"}
        stmt_log = StatementLog(servers.pg_log, servers.database_url)
        await stmt_log.open()

        async def start(mode: str) -> Any:
            name = f"bench-count-open-{mode}"
            env = app_env(
                servers,
                mirror=mode == "valkey",
                app_name=name,
                database_url=logging_dsn(servers.database_url, name),
            )
            return self.procs.engine(f"count-open-{mode}", env)

        try:
            counts = await pairing_costs.statements_per_open(
                stmt_log,
                start,
                self.procs.stop,
                ["valkey", "postgres"],
                customers,
                self.plan.pairing.counted_opens,
            )
        finally:
            await stmt_log.close()
        for mode, c in counts.items():
            log(
                f"  {mode}: {c['statements']} statements for {c['opens']} opens {c['statuses']}"
                + (" (started degraded)" if c["started_degraded"] else "")
                + f", waited {c['waited_for_trusted_mirror_s']} s for a trusted mirror"
            )
        return counts

    def _recording(self, name: str, pid: int, seconds: float) -> profiling.Recording | None:
        exe = profiling.py_spy()
        if exe is None:
            log("  py-spy not found: no profile (it comes with the bench extra)")
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return profiling.Recording(exe, pid, self.out_dir / f"profile-{name}.svg", seconds)

    async def _profile_http(self, targets: dict[str, tuple[Any, str]], tokens: Path) -> None:
        seconds = max(4.0, self.plan.seconds)
        for name, (proc, path) in targets.items():
            recording = self._recording(name, proc.pid, seconds)
            if recording is None:
                return
            await self.load(proc.base + path, "POST", seconds, tokens)
            svg = await asyncio.to_thread(recording.wait)
            self.results.setdefault("profiles", {})[name] = svg
            log(f"  profile {name}: {svg}")

    async def _profile_find_available(self, vk: inproc.Harness) -> None:
        seconds = 5.0
        recording = self._recording("find-available-10k", os.getpid(), seconds)
        if recording is None:
            return
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            await find_available_mitras(vk.ctx, inproc.now())
        svg = await asyncio.to_thread(recording.wait)
        self.results.setdefault("profiles", {})["find-available-10k"] = svg
        log(f"  profile find-available-10k: {svg}")

    async def _count_requests(self, tokens_file: Path) -> dict[str, Any]:
        """Dedicated app processes whose connections log every statement."""
        plan = self.plan
        servers = self.servers
        if servers.pg_log is None:
            return {"method": "unavailable: needs the embedded Postgres' log file"}
        stmt_log = StatementLog(servers.pg_log, servers.database_url)
        await stmt_log.open()
        out: dict[str, Any] = {
            "method": "Postgres server log: the measured app's connections run with"
            " log_statement=all (session setting from the DSN); statements between two"
            " marker statements are counted"
        }
        hb_requests = loadgen.requests_from_tokens(
            "POST", "/api/mitra/status/heartbeat", tokens_file
        )
        first_token = tokens_file.read_text().split("\n", 1)[0].split()[1]  # noqa: ASYNC240
        status_req = [
            loadgen.HttpClient.build(
                "GET", "/api/mitra/status", {"Authorization": f"Bearer {first_token}"}
            )
        ]
        beacon_req = [loadgen.HttpClient.build("GET", "/api/availability")]
        n = plan.counted_requests
        try:
            for mode, mirror in (("valkey", True), ("postgres", False)):
                name = f"bench-count-{mode}"
                env = app_env(
                    servers,
                    mirror=mirror,
                    app_name=name,
                    database_url=logging_dsn(servers.database_url, name),
                )
                proc = self.procs.engine(f"count-{mode}", env)
                try:
                    # Positive control: the measurement sees this process's statements.
                    async def status_reads(p: Any = proc) -> None:
                        await http_scenarios.exact_requests(p.base, status_req, 10)

                    control = await stmt_log.during(status_reads)
                    statuses: dict[str, Any] = {}

                    async def heartbeats(p: Any = proc, st: dict[str, Any] = statuses) -> None:
                        st["heartbeat"] = await http_scenarios.exact_requests(
                            p.base, hb_requests, n
                        )

                    async def beacons(p: Any = proc, st: dict[str, Any] = statuses) -> None:
                        st["beacon"] = await http_scenarios.exact_requests(p.base, beacon_req, n)

                    hb = await stmt_log.during(heartbeats)
                    bc = await stmt_log.during(beacons)
                    out[mode] = {
                        "requests": n,
                        "positive_control_status_x10": control.count,
                        "heartbeat_statements": hb.count,
                        "heartbeat_per_request": hb.count / n,
                        "heartbeat_kinds": hb.kinds(),
                        "beacon_statements": bc.count,
                        "beacon_per_request": bc.count / n,
                        "beacon_kinds": bc.kinds(),
                        "statuses": statuses,
                    }
                    log(
                        f"  {mode}: {hb.count} statements for {n} heartbeats, {bc.count} for"
                        f" {n} beacons (control: {control.count} for 10 status reads)"
                    )
                finally:
                    self.procs.stop(proc)
        finally:
            await stmt_log.close()
        return out

    async def _count_sweeps(self, vk: inproc.Harness) -> dict[str, Any]:
        servers = self.servers
        if servers.pg_log is None:
            return {"method": "unavailable: needs the embedded Postgres' log file"}
        stmt_log = StatementLog(servers.pg_log, servers.database_url)
        await stmt_log.open()
        counting = inproc.Harness(
            logging_dsn(servers.database_url, "bench-count-sweeps"),
            servers.valkey_url,
            "bench-count-sweeps",
        )
        try:
            await counting.open()
            ids = await inproc.online_ids(counting)
            await inproc.touch_all_heartbeats(counting, ids, inproc.now())
            result: dict[str, Any] = {}

            async def writeback() -> None:
                result["writeback"] = await run_heartbeat_writeback(counting.ctx, inproc.now())

            wb = await stmt_log.during(writeback)
            async with counting.ctx.db.connection() as c:
                busy = {
                    str(r[0])
                    for r in await c.fetch(
                        "SELECT mitra_id FROM chat_sessions"
                        " WHERE status IN ('active', 'pending_payment')"
                    )
                }
            chosen = [i for i in ids if i not in busy][-max(1, len(ids) // 100) :]
            await inproc.make_stale(counting, chosen, inproc.now() - timedelta(hours=2))

            async def auto_offline() -> None:
                result["auto_offline"] = await run_auto_offline(counting.ctx, inproc.now())

            ao = await stmt_log.during(auto_offline)
            await inproc.bring_back_online(counting, chosen, inproc.now())
            updates = sum(1 for s in wb.statements if s.lstrip().upper().startswith("UPDATE"))
            return {
                "writeback_statements": wb.count,
                "writeback_update_statements": updates,
                "writeback_rows": result["writeback"].affected,
                "writeback_kinds": wb.kinds(),
                "auto_offline_statements": ao.count,
                "auto_offline_offlined": result["auto_offline"].affected,
                "auto_offline_kinds": ao.kinds(),
            }
        finally:
            await counting.close()
            await stmt_log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short trials (about 2 minutes)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also record py-spy flamegraphs (heartbeat app processes, find-available at 10k)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)"
    )
    args = parser.parse_args(argv)
    plan = Plan.make(args.quick, args.profile)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + ("-quick" if plan.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    meta: dict[str, Any] = {
        "timestamp": stamp,
        "command": "./scripts/bench" + (" --quick" if plan.quick else ""),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": [round(v, 2) for v in load_average()],
        },
        "revision": git_revision(),
        "plan": {**plan.__dict__, "pairing": asdict(plan.pairing)},
    }
    log(
        f"halobestie benchmarks ({'quick' if plan.quick else 'full'});"
        f" load average {meta['machine']['load_average_start']}"
    )
    with tempfile.TemporaryDirectory(prefix="halobestie-bench-") as tmp_name:
        tmp = Path(tmp_name)
        log("starting Postgres and Valkey")
        servers = start_servers(tmp)
        procs = Procs(tmp)
        try:
            bench = Bench(plan, servers, procs, tmp, args.out / stamp)
            results = asyncio.run(bench.run())
            meta["versions"] = asyncio.run(_server_versions(servers))
        finally:
            procs.stop_all()
            servers.stop()
    meta["machine"]["load_average_end"] = [round(v, 2) for v in load_average()]
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    results = {"meta": meta, **results}
    results["targets"] = report.targets(results)
    json_path = args.out / f"{stamp}.json"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    plots = report_plots.plots(results, args.out / stamp)
    md_path = args.out / f"{stamp}.md"
    md_path.write_text(report.markdown(results, plots, md_path.parent))
    log(f"done in {meta['duration_s']:.0f} s: {json_path}")
    print()
    print(md_path.read_text())
    return 0


async def _server_versions(servers: Servers) -> dict[str, str]:
    import valkey.asyncio as valkey_async

    conn = await asyncpg.connect(servers.database_url)
    try:
        pg = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
    finally:
        await conn.close()
    client = valkey_async.Valkey.from_url(servers.valkey_url, decode_responses=True)
    try:
        info = await client.info("server")
    finally:
        await client.aclose()
    return {
        "postgres": str(pg),
        "postgres_settings": ", ".join(f"{k}={v}" for k, v in settings.items()),
        "valkey": str(info.get("valkey_version") or info.get("redis_version")),
    }


if __name__ == "__main__":
    sys.exit(main())
