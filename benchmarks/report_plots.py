"""PNG plots of one benchmark run (matplotlib, from the bench extra; none without it):
heartbeat, availability, beacon over HTTP, pairing at scale, sweeps. Targets and the
Markdown summary are in report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import report_pairing
from .report import med


def plots(r: dict[str, Any], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    http = r["http"]

    # 1. heartbeat (and ceiling): throughput and latency, trials as dots
    names = [
        ("ceiling_raw", "wrk ceiling\n(raw responder)"),
        ("ceiling_starlette_plain", "Starlette\nplain JSON"),
        ("heartbeat_floor", "floor: Starlette\n+ 1 Valkey cmd"),
        ("heartbeat_valkey", "heartbeat\nValkey path"),
        ("heartbeat_postgres", "heartbeat\nPostgres-only"),
        ("heartbeat_postgres_pool50", "Postgres-only\npool 50"),
    ]
    names = [n for n in names if n[0] in http]
    colors = ["#bbbbbb", "#999999", "#6a8caf", "#2e7d32", "#c62828", "#ef9a9a"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for i, (key, _) in enumerate(names):
        trials = http[key]
        ax1.bar(i, med(trials, "rps"), color=colors[i])
        ax1.scatter([i] * len(trials), [t["rps"] for t in trials], color="black", s=8, zorder=3)
        ax1.text(
            i,
            med(trials, "rps"),
            f"{med(trials, 'rps'):,.0f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax1.set_xticks(range(len(names)), [n for _, n in names], fontsize=8)
    ax1.set_ylabel("requests / s (median of trials; dots = trials)")
    ax1.set_title(f"Heartbeat throughput (wrk -t1 -c{r['loadgen']['connections']})")
    ax1.set_yscale("log")
    sub = names[2:]
    x = range(len(sub))
    ax2.bar(
        [i - 0.2 for i in x],
        [med(http[k], "p50_ms") for k, _ in sub],
        width=0.4,
        label="p50",
        color="#6a8caf",
    )
    ax2.bar(
        [i + 0.2 for i in x],
        [med(http[k], "p99_ms") for k, _ in sub],
        width=0.4,
        label="p99",
        color="#c62828",
    )
    ax2.set_xticks(list(x), [n for _, n in sub], fontsize=8)
    ax2.set_ylabel("latency, ms (median of trials)")
    ax2.set_title("Heartbeat latency under load")
    ax2.legend()
    fig.tight_layout()
    made.append(_save(fig, folder / "heartbeat.png"))
    plt.close(fig)

    # 2. find-available and beacon paths against size
    sizes = sorted(int(s) for s in r["find_available"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    fa = r["find_available"]
    ax1.plot(
        sizes,
        [fa[str(s)]["valkey"]["median_ms"] for s in sizes],
        "o-",
        color="#2e7d32",
        label="Valkey mirror",
    )
    ax1.plot(
        sizes,
        [fa[str(s)]["postgres"]["median_ms"] for s in sizes],
        "o-",
        color="#c62828",
        label="Postgres query",
    )
    ax1.axhline(10, color="grey", ls=":", lw=1)
    ax1.text(sizes[0], 10, " 10 ms target (10k)", va="bottom", fontsize=8, color="grey")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("online mitras")
    ax1.set_ylabel("median ms per call")
    ax1.set_title("find-available")
    ax1.legend()
    bc = r["beacon"]
    for key, label, color in (
        ("cached", "cached snapshot (1 GET)", "#1565c0"),
        ("valkey", "computed from Valkey", "#2e7d32"),
        ("postgres", "Postgres fallback", "#c62828"),
    ):
        ax2.plot(
            sizes, [bc[str(s)][key]["median_ms"] for s in sizes], "o-", color=color, label=label
        )
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("online mitras")
    ax2.set_ylabel("median ms per beacon (in-process)")
    ax2.set_title("Beacon: its three paths")
    ax2.legend()
    fig.tight_layout()
    made.append(_save(fig, folder / "availability.png"))
    plt.close(fig)

    # 3. beacon over HTTP, pairing at 1k (results before pairing at scale)
    old_pairing = "pairing" in r
    fig, axes = plt.subplots(1, 2 if old_pairing else 1, figsize=(13 if old_pairing else 7, 4.8))
    ax1 = axes[0] if old_pairing else axes
    bh = r["beacon_http"]
    ax1.plot(
        sizes,
        [med(bh[str(s)]["beacon_valkey_app"], "rps") for s in sizes],
        "o-",
        color="#2e7d32",
        label="app, Valkey path (shared snapshot)",
    )
    ax1.plot(
        sizes,
        [med(bh[str(s)]["beacon_postgres_app"], "rps") for s in sizes],
        "o-",
        color="#c62828",
        label="app, Postgres-only (in-process cache)",
    )
    ax1.set_xscale("log")
    ax1.set_xlabel("online mitras")
    ax1.set_ylabel("requests / s (median)")
    ax1.set_title("GET /api/availability over HTTP")
    ax1.legend(fontsize=8)
    ax1.set_yscale("log")
    if old_pairing:
        ax2 = axes[1]
        pr = r["pairing"]
        labels = ["Valkey path", "Postgres-only"]
        vals = [med(pr["valkey"], "round_trips_per_s"), med(pr["postgres"], "round_trips_per_s")]
        ax2.bar(labels, vals, color=["#2e7d32", "#c62828"])
        for i, v in enumerate(vals):
            ax2.text(i, v, f"{v:,.0f}/s", ha="center", va="bottom")
        ax2.set_ylabel("request -> accept round trips / s (median)")
        ax2.set_title(
            f"Pairing at {pr['online']:,} online, {pr['valkey'][0]['concurrency']} customers"
        )
    fig.tight_layout()
    made.append(_save(fig, folder / ("beacon_pairing.png" if old_pairing else "beacon_http.png")))
    plt.close(fig)
    scale_plot = report_pairing.plot(r.get("pairing_scale", {}), folder)
    if scale_plot is not None:
        made.append(scale_plot)

    # 4. sweeps
    sw = r.get("sweeps")
    if sw:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        items = [
            ("auto-offline\n(steady)", sw["auto_offline_steady"], 1000),
            (f"auto-offline\n({sw['stale_per_trial']:,} stale)", sw["auto_offline_stale"], 1000),
            ("heartbeat\nwrite-back", sw["writeback"], 2000),
            ("full reseed", sw["reseed"], None),
        ]
        for i, (_, s, goal) in enumerate(items):
            ax.bar(i, s["median_ms"], color="#6a8caf")
            ax.scatter([i] * len(s["samples_ms"]), s["samples_ms"], color="black", s=8, zorder=3)
            ax.text(
                i, s["median_ms"], f"{s['median_ms']:,.0f} ms", ha="center", va="bottom", fontsize=8
            )
            if goal:
                ax.hlines(goal, i - 0.4, i + 0.4, colors="#c62828", linestyles=":")
        ax.set_xticks(range(len(items)), [i[0] for i in items], fontsize=8)
        ax.set_ylabel("ms (median; dots = trials; red = target)")
        ax.set_title(f"Sweeps at {sw['online']:,} online mitras")
        fig.tight_layout()
        made.append(_save(fig, folder / "sweeps.png"))
        plt.close(fig)
    return made


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    return path
