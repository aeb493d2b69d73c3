"""The chat benchmark's summary (`chat_delivery.py`): the machine it ran on and a
Markdown table of its medians."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from .infra import cpu_model, load_average


def revision(src: Path) -> str:
    """The commit of the tree `src` belongs to, +dirty(src) when its src has changes."""

    def git(*args: str) -> str:
        done = subprocess.run(  # noqa: S603
            ["git", *args],  # noqa: S607
            cwd=src, capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout.strip()

    try:
        dirty = git("status", "--porcelain", "--", ".")
        return git("rev-parse", "--short", "HEAD") + ("+dirty(src)" if dirty else "")
    except OSError:
        return "unknown"


def environment(
    src: Path, load_start: tuple[float, float, float], seconds: float
) -> dict[str, Any]:
    return {
        "src": str(src),
        "revision": revision(src),
        "cpu": cpu_model(),
        "load_average_start": [round(v, 2) for v in load_start],
        "load_average_end": [round(v, 2) for v in load_average()],
        "duration_s": round(seconds, 1),
    }


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def markdown(out: dict[str, Any], name: str) -> str:
    lines = [
        f"# Chat delivery ({name})",
        "",
        f"Source tree {out['src']} at {out['revision']}, {out['cpu']}, load average"
        f" {out['load_average_start']} at start, {out['load_average_end']} at end;"
        f" {out['trials']} trials of {out['seconds']} s per scenario, alternating;"
        " medians of trials.",
        "",
        "Message send (HTTP, app A) → `message.created` on the other party's socket: on app A"
        " (`one` instance) or on app B (`two`, over Valkey pub/sub).",
        "",
        "| sessions | instances | messages/s | delivery p50 / p99 | send answered p50 / p99"
        " | CPU per message: app A / app B / Postgres / Valkey / client | lost |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, scenarios in out.get("delivery", {}).items():
        for scenario, s in scenarios.items():
            cpu = s["cpu_us_per_message"]
            lines.append(
                f"| {count} | {scenario} | {_f(s['messages_per_s'], 0)}"
                f" | {_f(s['p50_ms'])} / {_f(s['p99_ms'])} ms"
                f" | {_f(s['send_p50_ms'])} / {_f(s['send_p99_ms'])} ms"
                f" | {_f(cpu['a'], 0)} / {_f(cpu['b'], 0)} / {_f(cpu['postgres'], 0)}"
                f" / {_f(cpu['valkey'], 0)} / {_f(cpu['client'], 0)} µs"
                f" | {s['lost']} |"
            )
    lines.append("")
    for count, scenarios in out.get("delivery", {}).items():
        one, two = scenarios["one"], scenarios["two"]
        per_trial = [
            f"{b['p50_ms'] / a['p50_ms']:.2f}"
            for a, b in zip(one["trials"], two["trials"], strict=True)
            if a["p50_ms"]
        ]
        lines.append(
            f"* {count} session(s): two instances ÷ one, p50 latency"
            f" {two['p50_ms'] / one['p50_ms']:.2f}x (per trial {', '.join(per_trial)}),"
            f" messages/s {two['messages_per_s'] / one['messages_per_s']:.2f}x."
        )
    replay = out.get("replay")
    if replay is not None:
        lines.append("")
        if "skipped" in replay:
            lines.append(f"Reconnect replay: skipped ({replay['skipped']}).")
        else:
            lines.append(
                f"Reconnect replay of {replay['events']} missed events (`/ws?since=`):"
                f" all received, in order, once, {_f(replay['to_last_ms'], 0)} ms from"
                f" connect to the last ({_f(replay['events_per_s'], 0)} events/s; `ready`"
                f" after {_f(replay['to_ready_ms'])} ms); the same events paged over"
                f" `GET /api/events` (500 a page): {_f(replay['rest_ms'], 0)} ms."
                f" Per trial: {', '.join(_f(r['to_last_ms'], 0) for r in replay['trials'])} ms."
            )
    return "\n".join(lines) + "\n"
