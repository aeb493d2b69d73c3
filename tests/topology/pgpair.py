"""A Postgres primary and a streaming standby from Debian's PostgreSQL 15 binaries
(initdb, pg_ctl, pg_basebackup; scripts/test installs postgresql-15 when missing), each on
a free TCP port of 127.0.0.1, in a temporary folder. `pg_pair` stops both servers and
removes the folder on the way out, whatever happened.

initdb refuses to run as root: as root every binary runs as the `postgres` system user
(which the Debian package creates) through `runuser`, in a folder that user owns.

Replication is synchronous (`synchronous_standby_names = '*'`): a commit is acknowledged
only once the standby has it, so the promoted standby holds every write a client was told
succeeded; with asynchronous replication the last moments before a crash can be lost.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.multi.processes import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"
DATABASE = "halobestie"
STEP_TIMEOUT = 60  # seconds: any one initdb, pg_basebackup, start, stop or promote
SYNC_STANDBYS = (
    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'"
)


def require_binaries() -> None:
    """Skip with the reason when PostgreSQL 15 is absent; fail instead when CI is set."""
    missing = [b for b in ("initdb", "pg_ctl", "pg_basebackup") if not (BIN / b).exists()]
    problem = f"PostgreSQL 15 binaries missing in {BIN}: {', '.join(missing)}" if missing else ""
    if not problem and os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            problem = f"running as root and no {OS_USER!r} user to run initdb as"
    if problem:
        message = f"{problem} (apt-get install postgresql-15; scripts/test does it as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Node:
    name: str
    data: Path
    port: int

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


@dataclass
class PgPair:
    primary: Node
    standby: Node
    folder: Path
    _as_user: list[str] = field(default_factory=list)

    def url(self, database: str = DATABASE) -> str:
        """Both hosts, the primary first: what DATABASE_URL names."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},"
            f"127.0.0.1:{self.standby.port}/{database}"
        )

    def run(self, *args: str) -> str:
        done = subprocess.run(  # noqa: S603 - our own arguments
            [*self._as_user, *args],
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done.stdout

    def start(self, node: Node) -> None:
        options = (
            f"-p {node.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''"
            # Tests need no durability across a machine crash; the standby still gets
            # every commit before it is acknowledged (synchronous replication, `pg_pair`).
            " -c fsync=off"
        )
        self.run(
            str(BIN / "pg_ctl"), "-D", str(node.data), "-l", str(node.log), "-o", options,
            "-w", "-t", str(STEP_TIMEOUT), "start",
        )  # fmt: skip

    def stop(self, node: Node, mode: str = "fast") -> None:
        """Stop `node` (`immediate`: as a crash, no shutdown checkpoint); no-op if down."""
        if (node.data / "postmaster.pid").exists():
            self.run(
                str(BIN / "pg_ctl"), "-D", str(node.data), "-m", mode, "-w",
                "-t", str(STEP_TIMEOUT), "stop",
            )  # fmt: skip

    def promote(self, node: Node) -> None:
        """`pg_ctl promote`, waiting until the node accepts writes."""
        pg_ctl = str(BIN / "pg_ctl")
        self.run(pg_ctl, "-D", str(node.data), "-w", "-t", str(STEP_TIMEOUT), "promote")

    def restart_as_standby(self, node: Node, of: Node) -> None:
        """Start the crashed `node` again as a hot standby of `of` (what a failover manager
        does with an old primary; without pg_rewind it may not stream, but it is in
        recovery and answers read-only connections)."""
        self.run("touch", str(node.data / "standby.signal"))
        conninfo = f"primary_conninfo = 'host=127.0.0.1 port={of.port} user=postgres'"
        self.run("sh", "-c", f'echo "{conninfo}" >> "{node.data}/postgresql.auto.conf"')
        self.start(node)

    def psql(self, node: Node, sql: str) -> str:
        """One statement on `node`'s `postgres` database; its rows unaligned."""
        return self.run(
            str(BIN / "psql"), "-h", "127.0.0.1", "-p", str(node.port), "-U", "postgres",
            "-d", "postgres", "-XAtqc", sql,
        )  # fmt: skip

    def tail(self) -> str:
        return "\n".join(
            f"--- {n.name}\n{n.log.read_text(errors='replace')[-2000:]}"
            for n in (self.primary, self.standby)
            if n.log.exists()
        )


@contextlib.contextmanager
def pg_pair() -> Iterator[PgPair]:
    """A running primary (with database `halobestie`) and its streaming standby."""
    require_binaries()
    folder = Path(tempfile.mkdtemp(prefix="halobestie-pgpair-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam(OS_USER)
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", OS_USER, "--"]
    folder.chmod(0o700)
    pair = PgPair(
        Node("primary", folder / "primary", free_port()),
        Node("standby", folder / "standby", free_port()),
        folder,
        as_user,
    )
    try:
        pair.run(
            str(BIN / "initdb"), "-D", str(pair.primary.data), "-U", "postgres",
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pair.start(pair.primary)
        pair.psql(pair.primary, f"CREATE DATABASE {DATABASE}")
        # -R: standby.signal and primary_conninfo; -X stream: the WAL needed to start.
        pair.run(
            str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(pair.primary.port),
            "-U", "postgres", "-D", str(pair.standby.data), "-R", "-X", "stream",
            "-c", "fast", "--no-sync",
        )  # fmt: skip
        pair.start(pair.standby)
        # Synchronous from now on (set before the standby streamed, commits would wait).
        pair.psql(pair.primary, "ALTER SYSTEM SET synchronous_standby_names = '*'")
        pair.psql(pair.primary, "SELECT pg_reload_conf()")
        deadline = time.monotonic() + STEP_TIMEOUT
        while pair.psql(pair.primary, SYNC_STANDBYS).strip() != "1":
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby is not a sync standby: {pair.tail()}")
            time.sleep(0.1)
        yield pair
    finally:
        for node in (pair.standby, pair.primary):
            with contextlib.suppress(Exception):
                pair.stop(node, "immediate")
        shutil.rmtree(folder, ignore_errors=True)
