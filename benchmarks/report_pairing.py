"""Targets, Markdown and plot of pairing at scale (issue 8; `pairing_scale.py`), for the
run's report and for the A/B pairing report (`ab_pairing.py`)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PATHS = (("valkey", "Valkey path"), ("postgres", "Postgres-only path"))
FLAT = 1.5  # open p50 at the largest size <= FLAT x at the smallest
VS_POSTGRES = 3.0  # opens/s at 10k, Valkey path / Postgres-only path
BURST_LAST_MS = 1000.0


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def latency_p50(trials: list[dict[str, Any]]) -> float:
    return median([t["latency"]["open"]["p50_ms"] for t in trials])


def latency_p99(trials: list[dict[str, Any]]) -> float:
    return median([t["latency"]["open"]["p99_ms"] for t in trials])


def opens_per_s(trials: list[dict[str, Any]]) -> float:
    return median([t["throughput"]["opens_per_s"] for t in trials])


def round_trips_per_s(trials: list[dict[str, Any]]) -> float:
    return median([t["round_trips"]["round_trips_per_s"] for t in trials if "round_trips" in t])


def burst_last_ms(trials: list[dict[str, Any]]) -> float:
    return median([t["burst"]["last_ms"] for t in trials])


def burst_created(trials: list[dict[str, Any]]) -> int:
    """The fewest 201s of any trial."""
    return min(int(t["burst"]["created"]) for t in trials)


def burst_distinct(trials: list[dict[str, Any]]) -> float:
    return median([t["burst"]["distinct_offered"] for t in trials])


def _target(name: str, value: Any, goal: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": name, "value": value, "goal": goal, "met": met, "note": note}


def _sizes(ps: dict[str, Any]) -> list[int]:
    return sorted(int(s) for s in ps)


def targets(ps: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, as ratios of this run's own numbers."""
    out: list[dict[str, Any]] = []
    sizes = _sizes(ps)
    if not sizes:
        return out
    small, large = str(sizes[0]), str(sizes[-1])
    for path, label in PATHS:
        a, b = latency_p50(ps[small][path]), latency_p50(ps[large][path])
        ratio = b / a
        out.append(
            _target(
                f"pairing: open p50 at {int(large):,} vs {int(small):,} online ({label})",
                round(ratio, 2),
                f"<= {FLAT}x",
                ratio <= FLAT,
                " / ".join(f"{int(s):,}: {latency_p50(ps[str(s)][path]):.1f} ms" for s in sizes),
            )
        )
    mid = "10000" if "10000" in ps else large
    v, p = opens_per_s(ps[mid]["valkey"]), opens_per_s(ps[mid]["postgres"])
    per_trial = [
        a["throughput"]["opens_per_s"] / b["throughput"]["opens_per_s"]
        for a, b in zip(ps[mid]["valkey"], ps[mid]["postgres"], strict=False)
        if b["throughput"]["opens_per_s"]
    ]
    out.append(
        _target(
            f"pairing: opens/s at {int(mid):,} online, Valkey path vs Postgres-only path",
            round(v / p, 2) if p else "n/a",
            f">= {VS_POSTGRES:g}x",
            bool(p) and v / p >= VS_POSTGRES,
            f"{v:.0f} vs {p:.0f} opens/s ({ps[mid]['valkey'][0]['throughput']['concurrency']}"
            " customers, open then cancel); per trial: " + ", ".join(f"{x:.2f}" for x in per_trial),
        )
    )
    for path, label in PATHS:
        trials = ps[large][path]
        requests = trials[0]["burst"]["requests"]
        created, last = burst_created(trials), burst_last_ms(trials)
        out.append(
            _target(
                f"pairing: burst of {requests} opens at {int(large):,} online ({label})",
                f"{created} x 201, last {last:.0f} ms",
                f"all 201, last <= {BURST_LAST_MS:.0f} ms",
                created == requests and last <= BURST_LAST_MS,
                "per trial: "
                + "; ".join(
                    f"{t['burst']['statuses']} last {t['burst']['last_ms']:.0f} ms" for t in trials
                )
                + f"; distinct mitras offered (median) {burst_distinct(trials):.0f}",
            )
        )
    st_small, st_large = ps[small].get("statements"), ps[large].get("statements")
    if st_small and st_large and "valkey" in st_small and "valkey" in st_large:
        for path, label in PATHS:
            a, b = st_small[path]["per_open"], st_large[path]["per_open"]
            out.append(
                _target(
                    f"pairing: Postgres statements per open, {int(small):,} vs"
                    f" {int(large):,} online ({label})",
                    f"{a:.2f} / {b:.2f}",
                    "the same",
                    a == b,
                    f"{st_large[path]['statements']} statements for"
                    f" {st_large[path]['opens']} opens at {int(large):,}:"
                    f" {per_open_kinds(st_large[path])}",
                )
            )
    return out


def per_open_kinds(counted: dict[str, Any]) -> str:
    """The statements of an open, as "what x per open"; those seen fewer times than there
    were opens (a new connection's setup, asyncpg's savepoints) summed apart."""
    opens = max(1, counted["opens"])
    regular, other = [], 0
    for kind, n in counted["kinds"].items():
        if n >= opens:
            regular.append(f"{kind} x{n / opens:g}")
        else:
            other += n
    return "; ".join(regular) + (f"; other (one-off): {other}" if other else "")


def cpu_cell(trials: list[dict[str, Any]]) -> str:
    """App / Postgres / Valkey CPU ms per open + cancel (medians), or a dash."""
    cpus = [t["throughput"].get("cpu_us_per_open_and_cancel") for t in trials]
    if not all(cpus):
        return "—"
    return " / ".join(
        f"{median([c[k] for c in cpus if c]) / 1000:.1f}" for k in ("app", "postgres", "valkey")
    )


def fallbacks(ps: dict[str, Any]) -> list[str]:
    """ "<size> <app>: n, n, n" for each Valkey-path app whose trials fell back to
    Postgres (a Postgres-only app counts every read as one)."""
    out = []
    for size in _sizes(ps):
        for name, trials in ps[str(size)].items():
            if not name.endswith("valkey") or not isinstance(trials, list):
                continue
            if any(t.get("fallback_reads") for t in trials):
                counts = ", ".join(str(t.get("fallback_reads", 0)) for t in trials)
                out.append(f"{size:,} {name}: {counts}")
    return out


def _burst_cell(trials: list[dict[str, Any]]) -> str:
    requests = trials[0]["burst"]["requests"]
    return (
        f"{burst_created(trials)}/{requests} x 201, last {burst_last_ms(trials):,.0f} ms,"
        f" {burst_distinct(trials):.0f} mitras"
    )


def markdown(ps: dict[str, Any], *, title: str = "## Pairing at scale") -> list[str]:
    sizes = _sizes(ps)
    if not sizes:
        return []
    first = ps[str(sizes[0])]["valkey"][0]
    lines = [
        "",
        title,
        "",
        "Past sessions: rows of chat_sessions (20 closed sessions of history per mitra, 2M"
        " at 100k online, unless the column says otherwise). Medians of"
        f" {len(ps[str(sizes[0])]['valkey'])} interleaved trials per path. Open latency: one"
        " customer opening then cancelling, back to back. Opens/s:"
        f" {first['throughput']['concurrency']} customers doing the same at once (p50 of"
        " those opens in brackets). Round trips: open -> the first offered mitra accepts ->"
        f" the customer ends the session, {first['throughput']['concurrency']} customers."
        f" Burst: {first['burst']['requests']} distinct customers open at the same instant;"
        " 201s (fewest of the trials), time to the last answer, distinct mitras offered."
        " The choice in-process: the engine's functions that pick the mitras to offer,"
        " called directly (median; `pairing_costs.choose_inprocess`).",
        "",
        "| online | past sessions | path | the choice in-process, ms | open p50 ms"
        " | open p99 ms | opens/s (p50 ms) | CPU ms per open+cancel: app / Postgres / Valkey"
        " | round trips/s | burst |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for size in sizes:
        for path, label in PATHS:
            trials = ps[str(size)][path]
            loaded = median([t["throughput"]["open"]["p50_ms"] for t in trials])
            rt = round_trips_per_s(trials)
            history = ps[str(size)].get("chat_sessions")
            choose = ps[str(size)].get("choose_inprocess", {}).get(path)
            choice = "—" if choose is None else f"{choose['median_ms']:.2f}"
            lines.append(
                f"| {size:,} | {'?' if history is None else f'{history:,}'} | {label}"
                f" | {choice}"
                f" | {latency_p50(trials):.1f} | {latency_p99(trials):.1f}"
                f" | {opens_per_s(trials):,.0f} ({loaded:.0f}) | {cpu_cell(trials)} |"
                f" {'—' if rt != rt else f'{rt:,.0f}'} | {_burst_cell(trials)} |"
            )
    counted = [(s, ps[str(s)]["statements"]) for s in sizes if "statements" in ps[str(s)]]
    if counted:
        lines += [
            "",
            "Postgres statements per open request (server log, as for the heartbeat;"
            " opens by distinct customers, one after the other):",
            "",
            "| online | path | per open | what ran |",
            "| ---: | --- | ---: | --- |",
        ]
        for size, st in counted:
            for path, label in PATHS:
                if path in st:
                    c = st[path]
                    lines.append(
                        f"| {size:,} | {label} | {c['per_open']:.2f} | {per_open_kinds(c)} |"
                    )
    problems: dict[str, int] = {}
    for size in sizes:
        for path, _ in PATHS:
            for t in ps[str(size)][path]:
                for part in ("latency", "throughput", "round_trips", "burst"):
                    for k, v in t.get(part, {}).get("problems", {}).items():
                        key = f"{size:,} {path} {part}: {k}"
                        problems[key] = problems.get(key, 0) + v
    fell = fallbacks(ps)
    if fell:
        lines += [
            "",
            "**Reads served from Postgres because Valkey could not be used** (the"
            " app's metrics, per trial): " + "; ".join(fell),
        ]
    if problems:
        lines += [
            "",
            "Non-2xx answers met on the way: "
            + "; ".join(f"{k} x{v}" for k, v in problems.items()),
        ]
    return lines


def plot(ps: dict[str, Any], folder: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    sizes = _sizes(ps)
    if not sizes:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    colors = {"valkey": "#2e7d32", "postgres": "#c62828"}
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.6))
    for path, label in PATHS:
        ax1.plot(
            sizes,
            [latency_p50(ps[str(s)][path]) for s in sizes],
            "o-",
            color=colors[path],
            label=f"{label} p50",
        )
        ax1.plot(
            sizes,
            [latency_p99(ps[str(s)][path]) for s in sizes],
            "o:",
            color=colors[path],
            label=f"{label} p99",
        )
        ax2.plot(
            sizes,
            [opens_per_s(ps[str(s)][path]) for s in sizes],
            "o-",
            color=colors[path],
            label=f"{label} opens/s",
        )
        rts = [round_trips_per_s(ps[str(s)][path]) for s in sizes]
        if all(r == r for r in rts):
            ax2.plot(sizes, rts, "s:", color=colors[path], label=f"{label} round trips/s")
        ax3.plot(
            sizes,
            [burst_last_ms(ps[str(s)][path]) for s in sizes],
            "o-",
            color=colors[path],
            label=label,
        )
    ax3.axhline(BURST_LAST_MS, color="grey", ls=":", lw=1)
    for ax, title, ylabel in (
        (ax1, "Open a pairing request (one customer)", "ms"),
        (ax2, "With many customers at once", "per second (median)"),
        (ax3, "Burst of simultaneous opens: last answer", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("online mitras (20 past sessions each)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    saved = folder / "pairing_scale.png"
    fig.savefig(saved, dpi=110)
    plt.close(fig)
    return saved
