"""The stages of one benchmark run (run.py): `Bench` grows the dataset to each size of the
plan (plan.py) and measures every scenario at it, the HTTP ones under wrk with the targets
interleaved trial by trial; its results are the run's JSON."""

from __future__ import annotations

import asyncio
import os
import resource
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from halobestie.availability.queries import find_available_mitras
from halobestie.availability.seed import seed_mirror
from halobestie.migrate import run_migrations

from . import dataset, inproc, loadgen, pairing_costs, pairing_scale, profiling, statement_counts
from .infra import BENCH_JWT_SECRET, CpuMeter, Procs, Servers, app_env, load_average
from .plan import Plan


def log(msg: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


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
        self.results["statements"] = await statement_counts.per_request(
            servers, self.procs, tokens_file, plan.counted_requests, log
        )

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
        sw["statements"] = await statement_counts.per_sweep(servers)
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
            result["statements"] = await statement_counts.per_open(
                self.servers, self.procs, customers, plan.counted_opens, log
            )
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
