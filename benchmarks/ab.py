"""Before/after for an engine change: the same measurements against two source trees,
side by side in one run (interleaved trials), on one set of servers and data.

    .venv/bin/python -m benchmarks.ab --base-src /path/to/other/src [--quick]

`--base-src` is the `src` folder of the other tree (e.g. `git worktree add /tmp/base
HEAD` then `/tmp/base/src`); this checkout's `src` is "new", or the `src` that PYTHONPATH
names (`infra.SRC`). Measures the heartbeat over HTTP (Valkey path and Postgres-only path
of each tree, plus the bare-Starlette floor), the beacon over HTTP (the cached snapshot,
the same four apps), and find-available / the beacon computed from Valkey in-process, at
--online mitras. Prints new / base ratios, per trial too.

With `--pairing`: opening pairing requests instead, at each of --online (a comma list,
default 1000,10000,100000), every mitra with 20 closed sessions (`ab_pairing.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

import asyncpg

from halobestie.migrate import run_migrations

from . import dataset, inproc, loadgen
from .infra import BENCH_JWT_SECRET, REPO, SRC, Procs, app_env, start_servers


async def worker(database_url: str, valkey_url: str, iterations: int) -> dict[str, Any]:
    """Runs inside the tree under test (PYTHONPATH): find-available and beacon, timed."""
    h = inproc.Harness(database_url, valkey_url, "bench-ab-worker")
    await h.open()
    try:
        fa = await inproc.find_available(h, iterations)
        bc = await inproc.beacon_paths(h, iterations)
    finally:
        await h.close()
    import halobestie

    return {
        "tree": str(Path(halobestie.__file__).parent),
        "find_available_valkey_ms": fa["valkey"]["median_ms"],
        "find_available_postgres_ms": fa["postgres"]["median_ms"],
        "beacon_from_valkey_ms": bc["valkey"]["median_ms"],
        "available": fa["available"],
    }


def run_worker(src: Path, database_url: str, valkey_url: str, iterations: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(  # noqa: S603
        [
            sys.executable,
            "-m",
            "benchmarks.ab",
            "--worker",
            database_url,
            valkey_url,
            str(iterations),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("AB_JSON ")), None)
    if line is None:
        raise RuntimeError(f"worker failed: {done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return dict(json.loads(line[len("AB_JSON ") :]))


def app_cpu(pid: int) -> float:
    """CPU seconds (user + system) the process has spent so far."""
    import psutil  # type: ignore[import-untyped]

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def interleaved(
    wrk: str,
    targets: dict[str, tuple[str, int]],
    method: str,
    trials: int,
    seconds: float,
    tokens_file: Path | None,
) -> dict[str, dict[str, Any]]:
    """wrk (50 connections) against each (URL, pid), trials rotating through the targets;
    per trial also the app's CPU µs per request (less moved by the machine's other load
    than req/s: a busy neighbour takes cores, not this process's work per request). The
    medians of the trials per target, and the trials."""
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in targets}
    names = list(targets)
    for trial in range(trials):
        order = names[trial % len(names) :] + names[: trial % len(names)]
        for name in order:
            url, pid = targets[name]
            cpu_before = app_cpu(pid)
            r = loadgen.run_wrk(
                wrk,
                url,
                method=method,
                duration=seconds,
                connections=50,
                tokens_file=tokens_file,
            ).as_dict()
            r["app_cpu_us"] = (app_cpu(pid) - cpu_before) / max(1, r["requests"]) * 1e6
            r["trial"] = trial
            results[name].append(r)
            print(
                f"  {method} {name:<14} trial {trial + 1}: {r['rps']:8.0f} req/s"
                f" p99 {r['p99_ms']:.1f} ms, app CPU {r['app_cpu_us']:.0f} µs per request",
                flush=True,
            )
    return {
        k: {
            "rps": statistics.median(t["rps"] for t in v),
            "p50_ms": statistics.median(t["p50_ms"] for t in v),
            "p99_ms": statistics.median(t["p99_ms"] for t in v),
            "app_cpu_us": statistics.median(t["app_cpu_us"] for t in v),
            "trials": v,
        }
        for k, v in results.items()
    }


async def main(base_src: Path, online: int, trials: int, seconds: float) -> dict[str, Any]:
    wrk = loadgen.ensure_wrk(print)
    if wrk is None:
        raise SystemExit("benchmarks.ab needs wrk")
    out: dict[str, Any] = {
        "base_src": str(base_src),
        "new_src": str(SRC),
        "online": online,
    }
    with tempfile.TemporaryDirectory(prefix="halobestie-ab-") as tmp_name:
        tmp = Path(tmp_name)
        servers = start_servers(tmp)
        procs = Procs(tmp)
        try:
            url = servers.database_url
            await asyncio.to_thread(run_migrations, url)
            conn = await asyncpg.connect(url)
            await dataset.wipe(conn)
            await dataset.grow_to(conn, online, inproc.now())
            h = inproc.Harness(url, servers.valkey_url, "bench-ab")
            await h.open()  # seeds the mirror
            await h.close()
            tokens = await dataset.tokens(conn, "mitra", BENCH_JWT_SECRET, inproc.now(), limit=1000)
            await conn.close()
            tokens_file = dataset.write_tokens_file(tmp / "tokens.txt", tokens)

            def engine(name: str, src: Path, mirror: bool) -> Any:
                env = app_env(servers, mirror=mirror, app_name=f"bench-ab-{name}")
                env["PYTHONPATH"] = str(src)
                return procs.engine(name, env)

            new_src = SRC
            floor = procs.floor(servers)
            running = {
                "base_valkey": engine("base-valkey", base_src, True),
                "new_valkey": engine("new-valkey", new_src, True),
                "base_postgres": engine("base-postgres", base_src, False),
                "new_postgres": engine("new-postgres", new_src, False),
            }
            hb = "/api/mitra/status/heartbeat"
            heartbeats = {"floor": (floor.base + "/heartbeat", floor.pid)}
            heartbeats |= {k: (p.base + hb, p.pid) for k, p in running.items()}
            out["heartbeat"] = interleaved(wrk, heartbeats, "POST", trials, seconds, tokens_file)
            # The beacon over HTTP (the cached snapshot: SPEC's public poll) of every app.
            beacons = {k: (p.base + "/api/availability", p.pid) for k, p in running.items()}
            out["beacon_http"] = interleaved(wrk, beacons, "GET", trials, seconds, None)
            procs.stop_all()
            workers: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
            for _ in range(max(2, trials // 2)):
                for name, src in (("base", base_src), ("new", new_src)):
                    workers[name].append(
                        await asyncio.to_thread(run_worker, src, url, servers.valkey_url, 9)
                    )
            out["inproc"] = {
                name: {
                    key: statistics.median(w[key] for w in ws)
                    for key in (
                        "find_available_valkey_ms",
                        "find_available_postgres_ms",
                        "beacon_from_valkey_ms",
                    )
                }
                | {"tree": ws[0]["tree"]}
                for name, ws in workers.items()
            }
        finally:
            procs.stop_all()
            servers.stop()
    return out


def cli() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        db, vk, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
        result = asyncio.run(worker(db, vk, n))
        print("AB_JSON " + json.dumps(result), flush=True)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-src", type=Path, required=True)
    parser.add_argument(
        "--online", default="", help="online mitras (default 10000; --pairing: a comma list)"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--trials", type=int, default=0, help="default 5 (--quick: 2)")
    parser.add_argument("--seconds", type=float, default=0.0, help="per trial: 6 (--quick: 3)")
    parser.add_argument(
        "--pairing", action="store_true", help="pairing at scale instead (ab_pairing.py)"
    )
    args = parser.parse_args()
    if args.pairing:
        from . import ab_pairing

        return ab_pairing.cli(args.base_src, args.online, args.quick)
    args.online = int(args.online or 10_000)
    trials, seconds = (2, 3.0) if args.quick else (5, 6.0)
    trials, seconds = args.trials or trials, args.seconds or seconds
    started = time.perf_counter()
    out = asyncio.run(main(args.base_src.resolve(), args.online, trials, seconds))
    out["duration_s"] = round(time.perf_counter() - started, 1)
    http = ("heartbeat", "beacon_http")
    print(json.dumps({k: v for k, v in out.items() if k not in http}, indent=2))
    for what in http:
        for name, h in out[what].items():
            print(
                f"{what} {name:<14} {h['rps']:8.0f} req/s  p50 {h['p50_ms']:.2f} ms"
                f"  p99 {h['p99_ms']:.2f} ms  app CPU {h['app_cpu_us']:.0f} µs/request"
            )
    hb = out["heartbeat"]
    for tree in ("base", "new"):
        v, p = hb[f"{tree}_valkey"]["rps"], hb[f"{tree}_postgres"]["rps"]
        print(f"{tree}: valkey/floor {v / hb['floor']['rps']:.2f}, valkey/postgres {v / p:.2f}")
    for what in http:
        for kind in ("valkey", "postgres"):
            base, new = out[what][f"base_{kind}"], out[what][f"new_{kind}"]
            per_trial = ", ".join(
                f"{n['rps'] / b['rps']:.2f}"
                for b, n in zip(base["trials"], new["trials"], strict=True)
            )
            cpu_per_trial = ", ".join(
                f"{n['app_cpu_us'] / b['app_cpu_us']:.2f}"
                for b, n in zip(base["trials"], new["trials"], strict=True)
            )
            print(
                f"{what} {kind} path, new / base: {new['rps'] / base['rps']:.2f} req/s"
                f" (per trial {per_trial}), p99 {new['p99_ms']:.2f} vs {base['p99_ms']:.2f} ms,"
                f" app CPU per request {new['app_cpu_us'] / base['app_cpu_us']:.2f}"
                f" ({new['app_cpu_us']:.0f} vs {base['app_cpu_us']:.0f} µs; per trial"
                f" {cpu_per_trial})"
            )
    for key in ("find_available_valkey_ms", "beacon_from_valkey_ms"):
        b, n = out["inproc"]["base"][key], out["inproc"]["new"][key]
        print(f"{key}: base {b:.2f}, new {n:.2f}, new / base {n / b:.2f}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = REPO / "benchmarks" / "results" / f"ab-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
