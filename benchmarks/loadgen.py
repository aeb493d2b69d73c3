"""Load generation: wrk when it is there (installed on demand on Debian as root), a Python
fallback otherwise (said loudly in the results: it is slower than the servers it drives),
and a minimal keep-alive HTTP/1.1 client for the scenarios that chain requests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
WRK_SCRIPT = HERE / "wrk" / "requests.lua"


@dataclass
class LoadResult:
    tool: str
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # non-2xx/3xx answers plus socket errors and timeouts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ensure_wrk(log: Any = print) -> str | None:
    """The path of wrk; installs Debian's package when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        log("wrk is missing and cannot be installed here (needs apt-get as root)")
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in (
        ["install", "-y", "-qq", "wrk"],
        ["update", "-qq"],
        ["install", "-y", "-qq", "wrk"],
    ):
        log(f"wrk is missing: apt-get {' '.join(attempt)}")
        subprocess.run([apt, *attempt], env=env, capture_output=True, check=False, timeout=600)  # noqa: S603
        found = shutil.which("wrk")
        if found:
            return found
    log("could not install wrk")
    return None


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)  # noqa: S603
    return (
        (done.stdout or done.stderr).splitlines()[0].strip()
        if (done.stdout or done.stderr)
        else "?"
    )


def run_wrk(
    wrk: str,
    url: str,
    *,
    method: str = "GET",
    duration: float,
    connections: int,
    threads: int = 1,
    tokens_file: Path | None = None,
) -> LoadResult:
    args = [method] + ([str(tokens_file)] if tokens_file else [])
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        *args,
    ]
    done = subprocess.run(  # noqa: S603
        cmd, capture_output=True, text=True, check=False, timeout=duration + 60
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stdout}\n{done.stderr}")
    raw = json.loads(line[len("WRK_JSON ") :])
    seconds = raw["duration_us"] / 1e6
    errors = sum(
        raw[k]
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return LoadResult(
        tool="wrk",
        requests=raw["requests"],
        duration_s=seconds,
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
    )


# -- a minimal HTTP/1.1 keep-alive client --------------------------------------------


class HttpClient:
    """One keep-alive connection. Enough HTTP for our own servers (Content-Length
    bodies); far cheaper per request than a general-purpose client library."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None

    @staticmethod
    def build(
        method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> bytes:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", "Host: bench", f"Content-Length: {len(payload)}"]
        if body is not None:
            lines.append("Content-Type: application/json")
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self._writer is None:
            await self._connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(raw)
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                raise
            # The server closed the connection while it sat idle (uvicorn's keep-alive
            # timeout is 5 s: a slow burst leaves the first answered idle that long), so
            # the request was never read: send it again on a new connection, once.
            await self.close()
            await self._connect()
            assert self._reader is not None and self._writer is not None
            self._writer.write(raw)
            head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length) if length else b""
        return status, body

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
    ) -> tuple[int, Any]:
        status, raw = await self.send(self.build(method, path, headers, body))
        return status, (json.loads(raw) if raw else None)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


async def python_load(
    url: str,
    *,
    method: str,
    duration: float,
    connections: int,
    requests: list[bytes] | None = None,
) -> LoadResult:
    """The fallback load generator: `connections` keep-alive loops for `duration`."""
    parts = urlsplit(url)
    path = parts.path or "/"
    pool = requests or [HttpClient.build(method, path)]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def loop(offset: int) -> None:
        nonlocal errors
        client = HttpClient(url)
        i = offset
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status, _ = await client.send(pool[i % len(pool)])
                latencies.append(time.perf_counter() - started)
                if status >= 400:
                    errors += 1
                i += 1
        finally:
            await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(loop(k * 7919) for k in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    ms = [v * 1000 for v in latencies]
    return LoadResult(
        tool="python",
        requests=len(latencies),
        duration_s=elapsed,
        rps=len(latencies) / elapsed,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        mean_ms=sum(ms) / len(ms) if ms else float("nan"),
        max_ms=ms[-1] if ms else float("nan"),
        errors=errors,
    )


def requests_from_tokens(method: str, path: str, tokens_file: Path) -> list[bytes]:
    out = []
    for line in tokens_file.read_text().splitlines():
        mitra_id, token = line.split()
        headers = {"Authorization": f"Bearer {token}", "X-Mitra-Id": mitra_id}
        out.append(HttpClient.build(method, path, headers))
    return out
