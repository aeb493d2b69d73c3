"""Targets and the Markdown summary of one benchmark run (its plots: report_plots.py)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from . import report_pairing


def med(trials: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(t[key] for t in trials))


def http_medians(trials: list[dict[str, Any]]) -> dict[str, float]:
    return {k: med(trials, k) for k in ("rps", "p50_ms", "p99_ms")}


def per_trial_ratio(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[float]:
    by_trial = {t["trial"]: t["rps"] for t in b}
    return [t["rps"] / by_trial[t["trial"]] for t in a if by_trial.get(t["trial"])]


def _back_to_back(fa: dict[str, Any], path: str) -> str:
    series = fa.get(f"{path}_back_to_back")
    if series is None:  # results written before the back-to-back series existed
        return ""
    return f"{', ' if path == 'valkey' else ' ('}back to back {series['median_ms']:.2f}" + (
        ")" if path == "postgres" else ""
    )


def _target(name: str, value: Any, goal: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": met, "note": note}


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    http = r["http"]
    hv, hf, hp = http["heartbeat_valkey"], http["heartbeat_floor"], http["heartbeat_postgres"]
    floor_ratio = med(hv, "rps") / med(hf, "rps")
    pg_ratio = med(hv, "rps") / med(hp, "rps")
    out.append(
        _target(
            "heartbeat vs bare Starlette + one Valkey command",
            round(floor_ratio, 3),
            ">= 0.6x",
            floor_ratio >= 0.6,
            "per-trial: " + ", ".join(f"{x:.2f}" for x in per_trial_ratio(hv, hf)),
        )
    )
    note = "per-trial: " + ", ".join(f"{x:.2f}" for x in per_trial_ratio(hv, hp))
    note += f"; the floor itself is {med(hf, 'rps') / med(hp, 'rps'):.2f}x the Postgres path"
    if "heartbeat_postgres_pool50" in http:
        p50 = http["heartbeat_postgres_pool50"]
        ratio = med(hv, "rps") / med(p50, "rps")
        note += f"; vs the Postgres path with a 50-connection pool: {ratio:.2f}x"
    out.append(
        _target("heartbeat vs Postgres-only path", round(pg_ratio, 2), ">= 3x", pg_ratio >= 3, note)
    )
    st = r.get("statements", {})
    if "valkey" in st:
        v = st["valkey"]
        out.append(
            _target(
                "Postgres statements per heartbeat (Valkey path)",
                v["heartbeat_per_request"],
                "0",
                v["heartbeat_statements"] == 0 and v["positive_control_status_x10"] > 0,
                f"{v['heartbeat_statements']} in {v['requests']} heartbeats; positive control"
                f" saw {v['positive_control_status_x10']} for 10 status reads",
            )
        )
        out.append(
            _target(
                "Postgres statements per cached beacon",
                v["beacon_per_request"],
                "0",
                v["beacon_statements"] == 0,
                f"{v['beacon_statements']} in {v['requests']} beacon polls",
            )
        )
    else:
        out.append(
            _target("Postgres statements per heartbeat", "n/a", "0", None, st.get("method", ""))
        )
    fa = r["find_available"].get("10000")
    if fa:
        out.append(
            _target(
                "find-available at 10k online (median)",
                f"{fa['valkey']['median_ms']:.2f} ms",
                "<= 10 ms",
                fa["valkey"]["median_ms"] <= 10,
                f"of which Valkey server {fa['valkey_server_ms']:.1f} ms, client CPU"
                f" {fa['valkey_client_cpu_ms']:.1f} ms; Postgres query:"
                f" {fa['postgres']['median_ms']:.2f} ms (interleaved call by call)"
                + (
                    f"; back to back: Valkey {fa['valkey_back_to_back']['median_ms']:.2f} ms,"
                    f" Postgres {fa['postgres_back_to_back']['median_ms']:.2f} ms"
                    if "valkey_back_to_back" in fa
                    else ""
                ),
            )
        )
    sw = r.get("sweeps")
    if sw:
        worst = max(sw["auto_offline_steady"]["median_ms"], sw["auto_offline_stale"]["median_ms"])
        out.append(
            _target(
                f"auto-offline sweep at {sw['online']:,} online (median)",
                f"{worst:.0f} ms",
                "<= 1 s",
                worst <= 1000,
                f"steady {sw['auto_offline_steady']['median_ms']:.0f} ms; with"
                f" {sw['stale_per_trial']} stale {sw['auto_offline_stale']['median_ms']:.0f} ms",
            )
        )
        stm = sw.get("statements", {})
        updates = stm.get("writeback_update_statements")
        wb = sw["writeback"]["median_ms"]
        out.append(
            _target(
                f"heartbeat write-back at {sw['online']:,} online (median)",
                f"{wb:.0f} ms, {updates if updates is not None else '?'} UPDATE",
                "<= 2 s in one statement",
                wb <= 2000 and updates == 1,
                f"{sw['writeback_rows'][0]:,} rows per cycle; all statements of the cycle:"
                f" {stm.get('writeback_kinds', 'n/a')}",
            )
        )
    mem = r["memory"]
    per = mem.get("per_online_mitra_marginal")
    if per is not None:
        out.append(
            _target(
                "Valkey memory per online mitra",
                f"{per:.0f} B",
                "<= 200 B",
                per <= 200,
                f"marginal between {mem['marginal_between'][0]:,} and"
                f" {mem['marginal_between'][1]:,} online (used_memory)",
            )
        )
    out += report_pairing.targets(r.get("pairing_scale", {}))
    ceiling = med(http["ceiling_raw"], "rps")
    best_app = max(med(http[k], "rps") for k in http if not k.startswith("ceiling_raw"))
    out.append(
        _target(
            "load generator is not the bottleneck",
            f"{ceiling:,.0f} req/s ceiling",
            "well above every endpoint",
            ceiling >= 2 * best_app,
            f"{ceiling / best_app:.1f}x the fastest endpoint measured through it",
        )
    )
    return out


# -- markdown ------------------------------------------------------------------------


def _fmt_http(trials: list[dict[str, Any]]) -> str:
    m = http_medians(trials)
    cpu = [t.get("cpu_us_per_request", {}) for t in trials]

    def c(key: str) -> str:
        values = [x[key] for x in cpu if key in x]
        return f"{statistics.median(values):.0f}" if values else "—"

    return (
        f"{m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {c('app')} | {c('postgres')}"
        f" | {c('valkey')} | {c('loadgen')}"
    )


def _rps_p99(trials: list[dict[str, Any]]) -> str:
    return f"{med(trials, 'rps'):,.0f} ({med(trials, 'p99_ms'):,.0f})"


def markdown(r: dict[str, Any], plot_paths: list[Path], base: Path) -> str:
    meta = r["meta"]
    m = meta["machine"]
    lines = [
        f"# halobestie benchmarks — {meta['timestamp']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; Python {m['python']};"
        f" Postgres {meta.get('versions', {}).get('postgres', '?')}"
        f" ({meta.get('versions', {}).get('postgres_settings', '')}), Valkey"
        f" {meta.get('versions', {}).get('valkey', '?')}. Load average at start"
        f" {m['load_average_start']}, at end {m.get('load_average_end')}."
        f" Client, servers and load generator share the machine.",
        f"Revision {meta['revision']}. Command: `{meta['command']}` ({meta['duration_s']:.0f} s)."
        f" Load generator: {r['loadgen']['version']} (-t{r['loadgen']['threads']}"
        f" -c{r['loadgen']['connections']}). HTTP numbers are medians of"
        f" {meta['plan']['trials']} interleaved trials of {meta['plan']['seconds']:.0f} s.",
        *(
            [
                "",
                "**wrk was not available: the Python fallback load generator produced the HTTP"
                " numbers. It is much slower than wrk, so req/s are lower bounds and the"
                " ceiling row says how far it goes.**",
            ]
            if r["loadgen"]["tool"] != "wrk"
            else []
        ),
        "",
        "## Targets",
        "",
        "| target | value | goal | met | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in r["targets"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['value']} | {t['goal']} | {met} | {t['note']} |")
    http = r["http"]
    lines += [
        "",
        "## Heartbeat and load generator ceiling",
        "",
        "CPU columns: microseconds of CPU per request spent by the server process under test,"
        " by Postgres (all its processes), by Valkey and by the load generator (medians).",
        "",
        "| target | req/s | p50 ms | p99 ms | app CPU us | Postgres CPU us | Valkey CPU us"
        " | loadgen CPU us |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in (
        ("ceiling_raw", "load generator ceiling: framework-less responder"),
        ("ceiling_starlette_plain", "Starlette + uvicorn, constant JSON"),
        ("heartbeat_floor", "floor: bare Starlette + one Valkey command (EVALSHA heartbeat)"),
        ("heartbeat_valkey", "**heartbeat, Valkey path** (the app)"),
        ("heartbeat_postgres", "heartbeat, Postgres-only path (VALKEY_MIRROR_ENABLED=false)"),
        ("heartbeat_postgres_pool50", "heartbeat, Postgres-only path, DATABASE_POOL_SIZE=50"),
    ):
        if key in http:
            lines.append(f"| {label} | {_fmt_http(http[key])} |")
    st = r.get("statements", {})
    if "valkey" in st:
        lines += [
            "",
            "## Postgres statements per request",
            "",
            f"Method: {st['method']}.",
            "",
            "| path | per heartbeat | per beacon poll | what ran |",
            "| --- | ---: | ---: | --- |",
        ]
        for mode in ("valkey", "postgres"):
            s = st[mode]
            kinds = {**s["heartbeat_kinds"]}
            lines.append(
                f"| {mode} | {s['heartbeat_per_request']:.2f} | {s['beacon_per_request']:.3f} |"
                f" heartbeats: {kinds or '—'}; beacons: {s['beacon_kinds'] or '—'} |"
            )
        lines.append(
            f"\nPositive control (10 `GET /api/mitra/status` through the same Valkey-path"
            f" process): {st['valkey']['positive_control_status_x10']} statements seen."
        )
    lines += [
        "",
        "## Beacon, find-available (in-process medians, ms) and beacon over HTTP",
        "",
        "find-available = wall time, the two paths interleaved call by call; in brackets the"
        " Valkey server's own time (commandstats), the client's CPU time per call, and the"
        " median of the same calls back to back.",
        "",
        "| online | find-available Valkey | find-available Postgres | Postgres ms ÷ Valkey ms"
        " | beacon cached | beacon from Valkey | beacon Postgres fallback"
        " | HTTP beacon req/s (p99 ms), Valkey app"
        " | HTTP beacon req/s (p99 ms), Postgres-only app |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sorted(int(s) for s in r["find_available"]):
        fa = r["find_available"][str(size)]
        bc = r["beacon"][str(size)]
        bh = r["beacon_http"][str(size)]
        lines.append(
            f"| {size:,} | {fa['valkey']['median_ms']:.2f} (server"
            f" {fa.get('valkey_server_ms', float('nan')):.2f}, client CPU"
            f" {fa.get('valkey_client_cpu_ms', float('nan')):.2f}"
            f"{_back_to_back(fa, 'valkey')})"
            f" | {fa['postgres']['median_ms']:.2f}{_back_to_back(fa, 'postgres')} |"
            f" {fa['postgres']['median_ms'] / fa['valkey']['median_ms']:.1f}x |"
            f" {bc['cached']['median_ms']:.3f} | {bc['valkey']['median_ms']:.2f} |"
            f" {bc['postgres']['median_ms']:.2f} |"
            f" {_rps_p99(bh['beacon_valkey_app'])} | {_rps_p99(bh['beacon_postgres_app'])} |"
        )
    sw = r.get("sweeps")
    if sw:
        stm = sw.get("statements", {})
        lines += [
            "",
            f"## Sweeps at {sw['online']:,} online (medians of {sw['writeback']['n']} trials)",
            "",
            f"- auto-offline, nobody stale: {sw['auto_offline_steady']['median_ms']:,.0f} ms",
            f"- auto-offline, {sw['stale_per_trial']:,} stale (set offline, Postgres first):"
            f" {sw['auto_offline_stale']['median_ms']:,.0f} ms"
            f" ({stm.get('auto_offline_statements', '?')} statements:"
            f" {stm.get('auto_offline_kinds', '')})",
            f"- heartbeat write-back, {sw['writeback_rows'][0]:,} rows newer in Valkey:"
            f" {sw['writeback']['median_ms']:,.0f} ms;"
            f" {stm.get('writeback_update_statements', '?')} UPDATE per cycle"
            f" ({stm.get('writeback_statements', '?')} statements in all:"
            f" {stm.get('writeback_kinds', '')})",
            f"- full reseed from Postgres: {sw['reseed']['median_ms']:,.0f} ms",
        ]
    mem = r["memory"]
    lines += ["", "## Valkey memory", ""]
    if "per_online_mitra_marginal" in mem:
        lines.append(
            f"- per online mitra (marginal, used_memory between"
            f" {mem['marginal_between'][0]:,} and {mem['marginal_between'][1]:,} online):"
            f" **{mem['per_online_mitra_marginal']:.0f} bytes**"
        )
    for size in sorted(int(s) for s in mem if s.isdigit()):
        s = mem[str(size)]
        lines.append(
            f"- {size:,} online: used_memory {s['used_memory'] / 1e6:.1f} MB,"
            f" {s['per_online_mitra_vs_empty']:.0f} B per online mitra over the empty server;"
            f" MEMORY USAGE heartbeat key {s.get('heartbeat_key_bytes')} B, capacity key"
            f" {s.get('capacity_key_bytes')} B, online set"
            f" {s.get('online_set_bytes_per_member', 0):.0f} B per member"
        )
    lines += report_pairing.markdown(r.get("pairing_scale", {}))
    lines += _old_pairing(r)
    if r.get("profiles"):
        lines += ["", "## Profiles (py-spy flamegraphs, `--profile`)", ""]
        for name, svg in r["profiles"].items():
            if svg:
                rel = Path(svg).relative_to(base) if Path(svg).is_relative_to(base) else svg
                lines.append(f"- [{name}]({Path(rel).as_posix()})")
    if plot_paths:
        lines += ["", "## Plots", ""]
        for p in plot_paths:
            rel = p.relative_to(base) if p.is_relative_to(base) else p
            lines.append(f"![{p.stem}]({rel.as_posix()})")
    return "\n".join(lines) + "\n"


def _old_pairing(r: dict[str, Any]) -> list[str]:
    """Results written before pairing at scale: request -> accept at 1k, 8 customers."""
    pr = r.get("pairing")
    if pr is None:
        return []
    lines = [
        "",
        f"## Pairing at {pr['online']:,} online ({pr['valkey'][0]['concurrency']} customers,"
        " each: open request -> first offered mitra accepts -> customer ends the session)",
        "",
        "| path | round trips/s | round trip p50 ms | p99 ms | open p50 | accept p50 | end p50 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("valkey", "postgres"):
        t = pr[mode]
        lines.append(
            f"| {mode} | {med(t, 'round_trips_per_s'):,.0f} |"
            f" {statistics.median(x['round_trip']['p50_ms'] for x in t):.1f} |"
            f" {statistics.median(x['round_trip']['p99_ms'] for x in t):.1f} |"
            f" {statistics.median(x['open']['p50_ms'] for x in t):.1f} |"
            f" {statistics.median(x['accept']['p50_ms'] for x in t):.1f} |"
            f" {statistics.median(x['end']['p50_ms'] for x in t):.1f} |"
        )
    return lines
