"""Servers and processes of a benchmark run: the embedded Postgres and Valkey (or the
servers named by BENCH_DATABASE_URL / BENCH_VALKEY_URL, whose data is wiped), and the
app processes under test, each a uvicorn process started and stopped by us."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import halobestie
from halobestie.devservers import LocalServers, start_local_servers

REPO = Path(__file__).resolve().parent.parent
# The source tree under test ("new" in an A/B): the one this harness imports, which is this
# checkout's src unless PYTHONPATH names another (e.g. a clean worktree of a commit while
# the checkout has work in progress: `PYTHONPATH=/tmp/head/src python -m benchmarks.ab ...`).
SRC = Path(halobestie.__file__).resolve().parent.parent
BENCH_JWT_SECRET = "bench-jwt-secret-0123456789abcdef0123456789abcdef"  # noqa: S105
BENCH_WEBHOOK_SECRET = "bench-webhook-secret-0123456789"  # noqa: S105
# A stage's heartbeats must stay fresh for the whole run (the threshold costs nothing).
STALE_SECONDS = 3600


# The benchmark's servers are the same LocalServers that `halobestie dev` and the tests use.
Servers = LocalServers


def start_servers(tmp: Path) -> Servers:
    return start_local_servers(
        tmp,
        database="halobestie_bench",
        database_url=os.environ.get("BENCH_DATABASE_URL"),
        valkey_url=os.environ.get("BENCH_VALKEY_URL"),
        max_connections=300,
    )


def with_query(url: str, **params: str) -> str:
    """asyncpg passes unknown DSN query parameters to the server as session settings."""
    extra = "&".join(f"{k}={v}" for k, v in params.items())
    return url + ("&" if "?" in url else "?") + extra


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def app_env(
    servers: Servers, *, mirror: bool, app_name: str, database_url: str | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        {
            "HALOBESTIE_ENV": "production",
            "DATABASE_URL": database_url
            or with_query(servers.database_url, application_name=app_name),
            "VALKEY_URL": servers.valkey_url,
            "JWT_SECRET": BENCH_JWT_SECRET,
            "PAYMENT_WEBHOOK_SECRET": BENCH_WEBHOOK_SECRET,
            "VALKEY_MIRROR_ENABLED": "true" if mirror else "false",
            # Background work off: the numbers are the requests' own, and the statement
            # counts see nothing but the requests.
            "SWEEPS_ENABLED": "false",
            "TIMERS_ENABLED": "false",
            "HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS),
            "LOG_LEVEL": "WARNING",
        }
    )
    return env


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path
    health: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; log tail:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.base + self.health, timeout=2) as r:  # noqa: S310
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout}s; log tail:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            # Our own process group (start_new_session): uvicorn and nothing else.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)


@dataclass
class Procs:
    logs: Path
    running: list[Proc] = field(default_factory=list)

    def start(self, name: str, args: list[str], env: dict[str, str], health: str) -> Proc:
        port = free_port()
        log = self.logs / f"{name}.log"
        cmd = [a.replace("{port}", str(port)) for a in args]
        with log.open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, port, popen, log, health)
        self.running.append(proc)
        proc.wait_ready()
        return proc

    def engine(self, name: str, env: dict[str, str]) -> Proc:
        """The real app, served exactly as `halobestie serve` serves it (uvloop,
        httptools, no access log), without its migrate step (done once, up front)."""
        return self.start(
            name, [sys.executable, "-m", "benchmarks.serve_app", "{port}"], env, "/healthz"
        )

    def floor(self, servers: Servers) -> Proc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["VALKEY_URL"] = servers.valkey_url
        args = [sys.executable, "-m", "uvicorn", "benchmarks.floor_app:app", "--port", "{port}"]
        args += "--loop uvloop --http httptools --no-access-log --log-level warning".split()
        return self.start("floor", args, env, "/plain")

    def raw(self) -> Proc:
        env = dict(os.environ)
        return self.start("raw", [sys.executable, "-m", "benchmarks.raw_http", "{port}"], env, "/")

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc)


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


class CpuMeter:
    """CPU seconds (user + system) spent by each server process of the run, so that a
    trial can say where its time went: the app, Postgres (postmaster and backends),
    Valkey. Counted per process id: a backend that starts during a trial counts from
    zero, one that exits during it loses only its last moments. psutil comes with
    pgserver."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers

    def _postgres_pids(self) -> list[int]:
        import psutil  # type: ignore[import-untyped]

        if self.servers.postgres is None:
            return []
        try:
            pid = int((self.servers.postgres.data_dir / "postmaster.pid").read_text().split()[0])
            master = psutil.Process(pid)
            return [pid, *(c.pid for c in master.children())]
        except (OSError, ValueError, psutil.Error):
            return []

    def _valkey_pids(self) -> list[int]:
        proc = getattr(self.servers.valkey, "_proc", None)
        return [proc.pid] if proc is not None else []

    @staticmethod
    def _cpu(pids: list[int]) -> dict[int, float]:
        import psutil

        out: dict[int, float] = {}
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                out[pid] = t.user + t.system
            except psutil.Error:
                pass
        return out

    def snapshot(self, app_pid: int | None) -> dict[str, dict[int, float]]:
        return {
            "app": self._cpu([app_pid]) if app_pid else {},
            "postgres": self._cpu(self._postgres_pids()),
            "valkey": self._cpu(self._valkey_pids()),
        }

    @staticmethod
    def per_request_us(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]], requests: int
    ) -> dict[str, float]:
        out = {}
        for group, now in after.items():
            spent = sum(cpu - before[group].get(pid, 0.0) for pid, cpu in now.items())
            out[group] = round(spent / max(1, requests) * 1e6, 1)
        return out
