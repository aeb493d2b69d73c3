"""Real Postgres for tests and `halobestie dev`: a pgserver cluster (PG 16, unix socket
only) in a data directory, adopted or cleaned up when an earlier run left one there."""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from .extra import import_untyped

_PG_SUPERUSER = "postgres"
_PG_DEFAULT_PORT = 5432
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


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
        return Path(import_untyped("pgserver._commands").POSTGRES_BIN_PATH)

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
        pgserver = import_untyped("pgserver")
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
        server = import_untyped("pgserver").get_server(self.data_dir, cleanup_mode="stop")
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
        psutil = import_untyped("psutil")
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
        psutil = import_untyped("psutil")
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
            psutil = import_untyped("psutil")
            proc.send_signal(signal.SIGINT)  # "fast" shutdown, as pg_ctl asked; then SIGKILL
            try:
                proc.wait(5)
            except psutil.TimeoutExpired:
                proc.kill()


def _identifier(name: str) -> str:  # names are interpolated into SQL: plain identifiers only
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not a plain SQL identifier: {name!r}")
    return name
