"""Debian's PgBouncer (/usr/sbin/pgbouncer, 1.18: before 1.21, so no prepared statements
across server connections) in front of a test Postgres, in transaction mode, as a child
process stopped on the way out whatever happened.

Auth is `trust` on loopback (the test Postgres trusts its socket too); the user must still
be listed in the auth file. PgBouncer refuses to run as root: as root it runs as the owner
of the Postgres socket directory (pgserver's own user), which can also reach that socket.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

PGBOUNCER = Path("/usr/sbin/pgbouncer")
START_WITHIN = 10.0  # seconds for it to accept connections
STOP_WITHIN = 10.0


@dataclass
class PgBouncer:
    proc: asyncio.subprocess.Process
    port: int
    user: str
    log: Path

    def url(self, database: str) -> str:
        """A DATABASE_URL through the pooler."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def tail(self) -> str:
        """The end of its log and of what it printed (why it would not start)."""
        text = ""
        for path in (self.log, self.log.with_name("stderr.log")):
            if path.exists():
                text += path.read_text(errors="replace")[-3000:]
        return text


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _upstream(database_url: str) -> tuple[str, int, str]:
    """(host or socket directory, port, user) of a test Postgres URL."""
    parts = urlsplit(database_url)
    query = parse_qs(parts.query)
    host = parts.hostname or query.get("host", ["127.0.0.1"])[-1]
    port = parts.port or int(query.get("port", ["5432"])[-1])
    return host, port, parts.username or "postgres"


def _run_as(host: str) -> list[str]:
    """`-u <user>` when root (PgBouncer will not run as root): the owner of the socket
    directory for a unix socket, else the `postgres` user Debian's packages create."""
    if os.getuid() != 0:
        return []
    if host.startswith("/"):
        return ["-u", pwd.getpwuid(os.stat(host).st_uid).pw_name]
    return ["-u", "postgres"]


def _write_config(database_url: str, workdir: Path, extra_databases: str) -> tuple[Path, int]:
    """pgbouncer.ini and its auth file in `workdir`; returns (ini, the port it listens on)."""
    host, pg_port, user = _upstream(database_url)
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o777)  # PgBouncer, running as another user, writes its log and pid here
    port = _free_port()
    users = workdir / "users.txt"
    users.write_text(f'"{user}" ""\n')
    ini = workdir / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
{extra_databases}
* = host={host} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = 20
max_client_conn = 200
logfile = {workdir / "pgbouncer.log"}
pidfile = {workdir / "pgbouncer.pid"}
"""
    )
    for path in (users, ini):
        path.chmod(0o644)
    return ini, port


@asynccontextmanager
async def pgbouncer(database_url: str, *, extra_databases: str = "") -> AsyncIterator[PgBouncer]:
    """PgBouncer in `pool_mode = transaction` forwarding every database name to the
    Postgres of `database_url`; `extra_databases`: more `[databases]` lines. Its files
    live in a folder of their own under the system's temp dir (pytest's tmp_path is
    private to root, and PgBouncer may run as another user), removed afterwards."""
    host, _, user = _upstream(database_url)
    with tempfile.TemporaryDirectory(prefix="halobestie-pgbouncer-") as tmp:
        workdir = Path(tmp)
        ini, port = _write_config(database_url, workdir, extra_databases)
        with (workdir / "stderr.log").open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                str(PGBOUNCER),
                *_run_as(host),
                str(ini),
                stdout=stderr,
                stderr=stderr,
            )
        bouncer = PgBouncer(proc, port, user, workdir / "pgbouncer.log")
        try:
            await _wait_listening(bouncer)
            yield bouncer
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), STOP_WITHIN)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_listening(bouncer: PgBouncer) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_WITHIN
    while True:
        if bouncer.proc.returncode is not None:
            raise AssertionError(f"pgbouncer exited {bouncer.proc.returncode}: {bouncer.tail()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", bouncer.port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(
                    f"pgbouncer not up in {START_WITHIN}s: {bouncer.tail()}"
                ) from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
