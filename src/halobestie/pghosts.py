"""Several Postgres hosts in one DATABASE_URL (SPEC §8): the app connects to the one that
accepts writes, so that a promoted standby is found without a redeploy.

    postgresql://user:pass@h1:5432,h2:5432/db               (libpq's form)
    postgresql://user:pass@/db?host=h1,h2&port=5432,5432    (the query form)

`connect` is the one door every connection of the app goes through (the pool, the timer
runner's LISTEN, the stall reaper, migrations through SQLAlchemy's `async_creator`, the
CLI's commands), so none of them can end up on a standby:

* with several hosts, `asyncpg_dsn` adds `target_session_attrs=read-write` (unless the URL
  sets it): asyncpg then refuses a host that is in recovery or read-only
  (TargetServerAttributeNotMatched), which db.py counts as unreachable (503
  `database_unavailable`), as it does a write refused as read-only (25006) on a connection
  opened earlier;
* each host gets its share of the connect timeout (asyncpg's own multi-host connect
  spends the whole timeout on the first host when that host is silent, e.g. a dead VM,
  and so would never reach the second), and the host that answered last is tried first:
  after a failover, new connections pay for the dead host at most once per process.

Pure parsing (`hosts_of`, `check_database_url`, `asyncpg_dsn`) raises ValueError with a
message naming what is wrong; config.py validates DATABASE_URL with it at startup.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

# What asyncpg accepts for target_session_attrs (asyncpg.connect_utils.SessionAttribute);
# the app writes, so only these three make sense in DATABASE_URL.
WRITABLE_TARGETS = ("read-write", "primary", "any")
EXAMPLE = "postgresql://user:pass@host1:5432,host2:5432/dbname"


@dataclass(frozen=True)
class Host:
    host: str
    port: int | None  # None: the default (5432, or the query's port)

    def __str__(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port is None else f"{name}:{self.port}"


def _port(text: str, entry: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise ValueError(
            f"DATABASE_URL host {entry!r} has a bad port {text!r} (1 to 65535); e.g. {EXAMPLE}"
        )
    return int(text)


def _hostspec(spec: str) -> list[Host]:
    """`h1:5432,[::1]:5433,h3` -> hosts; an empty entry or a bad port is an error."""
    hosts = []
    for entry in spec.split(","):
        if entry.startswith("["):  # IPv6 literal: [addr] or [addr]:port
            addr, sep, rest = entry[1:].partition("]")
            if not sep or not addr or (rest and not rest.startswith(":")):
                raise ValueError(f"DATABASE_URL host {entry!r} is malformed; e.g. {EXAMPLE}")
            hosts.append(Host(addr, _port(rest[1:], entry) if rest else None))
            continue
        name, sep, port = entry.partition(":")
        if not name:
            raise ValueError(
                f"DATABASE_URL has an empty host in {spec!r} (a stray comma or a port without"
                f" a host); e.g. {EXAMPLE}"
            )
        hosts.append(Host(unquote(name), _port(port, entry) if sep else None))
    return hosts


def hosts_of(url: str) -> list[Host]:
    """The hosts a postgresql:// URL names, in order: from its netloc, else from its
    `host` (and `port`) query parameters; [] when it names none (libpq's default host).
    Raises ValueError for a malformed list."""
    parts = urlsplit(url)
    spec = parts.netloc.rpartition("@")[2]
    if spec:
        return _hostspec(spec)
    query = parse_qs(parts.query)
    if "host" not in query:
        return []
    names = query["host"][-1].split(",")
    if not all(names):
        raise ValueError(f"DATABASE_URL has an empty host in host={query['host'][-1]!r}")
    ports: list[int | None] = [None] * len(names)
    if "port" in query:
        raw = query["port"][-1].split(",")
        if len(raw) == 1:
            raw = raw * len(names)
        if len(raw) != len(names):
            raise ValueError(
                f"DATABASE_URL names {len(names)} hosts but {len(raw)} ports (one port for"
                " all, or one per host)"
            )
        ports = [_port(p, p) for p in raw]
    return [Host(n, p) for n, p in zip(names, ports, strict=True)]


def check_database_url(url: str) -> None:
    """Raises ValueError naming the problem: a bad host list or target_session_attrs."""
    hosts_of(url)
    target = parse_qs(urlsplit(url).query).get("target_session_attrs")
    if target is not None and target[-1] not in WRITABLE_TARGETS:
        raise ValueError(
            f"DATABASE_URL's target_session_attrs must be one of {', '.join(WRITABLE_TARGETS)}"
            f" (the app writes); got {target[-1]!r}"
        )


def asyncpg_dsn(url: str) -> str:
    """The DSN every connection uses: the postgresql:// scheme, and with several hosts
    `target_session_attrs=read-write` unless the URL chose (only a writable host will do)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    query = parse_qs(urlsplit(url).query)
    if len(hosts_of(url)) > 1 and "target_session_attrs" not in query:
        base, hash_, fragment = url.partition("#")
        base += ("&" if "?" in base else "?") + "target_session_attrs=read-write"
        url = base + hash_ + fragment
    return url


# The host that answered last, per DSN: tried first next time (see the module's note).
_last_good: dict[str, Host] = {}


# asyncpg.connect's signature (timeout included): asyncpg's pool calls it so.
async def connect(
    dsn: str | None = None,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109
    **kwargs: Any,
) -> Any:
    """asyncpg.connect for a DSN of one or several hosts (keyword arguments pass through:
    server_settings, command_timeout, and what asyncpg's pool adds). With several hosts,
    each is tried in turn for `timeout` / their number seconds, the last good one first.
    Raises what the last host raised: OSError, TimeoutError, asyncpg's connection errors,
    or asyncpg.TargetServerAttributeNotMatched (every host that answered is a standby)."""
    hosts = hosts_of(dsn) if dsn else []
    if dsn is None or len(hosts) < 2:
        return await asyncpg.connect(dsn, timeout=timeout, **kwargs)
    first = _last_good.get(dsn)
    order = ([first] if first in hosts else []) + [h for h in hosts if h != first]
    share = timeout / len(order)
    error: BaseException | None = None
    for host in order:
        try:
            conn = await asyncpg.connect(
                dsn, host=host.host, port=host.port, timeout=share, **kwargs
            )
        except (
            OSError,
            TimeoutError,
            asyncpg.TargetServerAttributeNotMatched,
            asyncpg.CannotConnectNowError,  # starting up, shutting down, in recovery
            asyncpg.PostgresConnectionError,
        ) as exc:
            error = exc
            continue
        _last_good[dsn] = host
        return conn
    assert error is not None  # order is never empty here
    raise error
