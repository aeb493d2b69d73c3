"""Where the app's Valkey is: one server named by `VALKEY_URL`, or the primary that a set
of Sentinels names (SPEC §8). `client.connect` builds every Valkey client of the app from
a `ValkeyEndpoint`, so the mirror, the auto-pipeline and the event bus all follow a
failover the same way.

With Sentinels, each new connection first asks a Sentinel where the primary is (one
round trip, `SENTINEL MASTERS`, to the first Sentinel that answers), then connects there;
every pool also asks once a second in the background, to leave a primary that was
switched over while still alive (`_FollowingPool`). During a failover the Sentinels
name the dead primary until they agree it is down, then none (valkey-py raises
MasterNotFoundError, a ConnectionError), then the promoted replica: to the engine, the
same outage and comeback as a restarted Valkey, and the new server's `run_id` makes the
mirror reseed before it is trusted again (mirror.py).

The Sentinels are asked with credentials of their own (VALKEY_SENTINEL_USERNAME /
VALKEY_SENTINEL_PASSWORD: Sentinel's `requirepass`, not the primary's), and over TLS when
VALKEY_URL is rediss:// (or VALKEY_SENTINEL_TLS says so), with the URL's ssl_* options. A
Sentinel that refuses them makes the primary as unreachable as a dead one (the app serves
from Postgres), but the error says which: `SentinelAuthenticationError`, logged at
startup as `describe_failure` words it, the secret never included.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import weakref
from dataclasses import dataclass, field
from typing import Any

from valkey.asyncio import Valkey
from valkey.asyncio.connection import SSLConnection, parse_url
from valkey.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from valkey.exceptions import AuthenticationError, ValkeyError

from ..config import Settings


@dataclass(frozen=True)
class ValkeyEndpoint:
    """`url`: a redis(s):// URL. With `sentinels` ((host, port) pairs), its host and port
    are ignored and the primary is the one the Sentinels call `sentinel_master`; the URL
    still gives the credentials, the database and TLS (rediss://) for the primary.
    `sentinel_username`/`sentinel_password`: the Sentinels' own (None: they are asked
    without); `sentinel_tls`: TLS to the Sentinels (None: as the URL's scheme says)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = "mymaster"
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_tls: bool | None = None
    # VALKEY_CLUSTER: `url` names a node of a Valkey Cluster (cluster.py).
    cluster: bool = False


def endpoint(settings: Settings) -> ValkeyEndpoint:
    """The app's Valkey as configured (VALKEY_URL, VALKEY_SENTINELS, VALKEY_SENTINEL_*)."""
    password = settings.valkey_sentinel_password
    return ValkeyEndpoint(
        url=settings.valkey_client_url,
        sentinels=settings.valkey_sentinels,
        sentinel_master=settings.valkey_sentinel_master,
        sentinel_username=settings.valkey_sentinel_username,
        sentinel_password=None if password is None else password.get_secret_value(),
        sentinel_tls=settings.valkey_sentinel_tls,
        cluster=settings.valkey_cluster,
    )


# How often a pool asks the Sentinels where the primary is, besides on every new
# connection. A switchover (SENTINEL FAILOVER) leaves the old primary up and taking writes
# until the Sentinels turn it into a replica, measured ~10 s later (their INFO period):
# without this, pooled connections would keep writing there, and one instance could trust
# the old server while another reseeds the new one.
RECHECK_SECONDS = 1.0


class _FollowingPool(SentinelConnectionPool):
    """A Sentinel pool that follows a switchover within RECHECK_SECONDS: from its first
    checkout on, it asks a Sentinel that often, in the background (one round trip; no
    request waits for it, so a slow or unreachable Sentinel costs nothing). When the
    primary changed: idle connections are disconnected (valkey-py), those in use as they
    are released, and pub/sub connections at once (a subscription keeps its connection;
    its next read fails and the subscriber reconnects). Sentinels that do not answer
    leave the pool on the primary it has (if that one died too, its connections say so)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._rechecking: asyncio.Task[None] | None = None
        self._subscribed: weakref.WeakSet[Any] = weakref.WeakSet()

    async def get_connection(self, command_name: Any, *keys: Any, **options: Any) -> Any:
        if self._rechecking is None:
            self._rechecking = asyncio.create_task(self._recheck(), name="sentinel-recheck")
        connection = await super().get_connection(command_name, *keys, **options)  # type: ignore[no-untyped-call]
        if command_name == "pubsub":
            self._subscribed.add(connection)
        return connection

    async def _recheck(self) -> None:
        while True:
            await asyncio.sleep(RECHECK_SECONDS)
            known = self.master_address
            try:
                await self.get_master_address()  # type: ignore[no-untyped-call]
            except (ValkeyError, OSError, TimeoutError):
                continue
            if known is not None and self.master_address != known:
                for connection in list(self._subscribed):
                    await connection.disconnect()

    async def stop_rechecking(self) -> None:
        task, self._rechecking = self._rechecking, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def release(self, connection: Any) -> None:
        self._subscribed.discard(connection)
        if self.master_address not in (None, (connection.host, connection.port)):
            await connection.disconnect()  # it talks to a former primary
        await super().release(connection)


class _SentinelManagedValkey(Valkey):
    """A primary's client that also closes its Sentinel clients when closed."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool: Any = self.connection_pool  # a _FollowingPool (master_for)
        await pool.stop_rechecking()
        await super().aclose(close_connection_pool)
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


class SentinelAuthenticationError(MasterNotFoundError):
    """No Sentinel named the primary, and at least one refused the app's credentials
    (VALKEY_SENTINEL_USERNAME / VALKEY_SENTINEL_PASSWORD, missing or wrong). A
    ConnectionError, handled like an unreachable Valkey; only the message differs."""


class _SentinelNode(Valkey):
    """The client of one Sentinel: remembers whether its last command was refused for
    authentication (valkey-py's discover_master keeps only the errors' text)."""

    refused = False

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            result = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except AuthenticationError:
            self.refused = True
            raise
        self.refused = False
        return result


class _Sentinels(Sentinel):
    """valkey-py's Sentinel with `_SentinelNode` clients, raising SentinelAuthenticationError
    instead of a bare MasterNotFoundError when credentials were the reason."""

    def __init__(
        self,
        addresses: list[tuple[str, int]],
        sentinel_kwargs: dict[str, Any],
        **connection_kwargs: Any,
    ) -> None:
        super().__init__([], sentinel_kwargs=sentinel_kwargs, **connection_kwargs)  # type: ignore[no-untyped-call]
        self._nodes = [_SentinelNode(host=h, port=p, **sentinel_kwargs) for h, p in addresses]
        self.sentinels = list(self._nodes)  # reordered by discover_master

    async def discover_master(self, service_name: str) -> Any:
        try:
            return await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            if any(node.refused for node in self._nodes):
                raise SentinelAuthenticationError(
                    f"the Sentinels refused authentication: {exc}"
                ) from exc
            raise


def describe_failure(exc: BaseException | None, *, tls: bool | None = None) -> str:
    """Why Valkey could not be used, in the words an operator needs (the startup log):
    which credentials were refused, or that TLS failed (the certificate not trusted; a
    plaintext URL to a TLS-only port, when `tls` is False: VALKEY_URL is redis://), if
    that is why. Never a secret: valkey-py's messages name hosts and ports, not passwords."""
    verify = _certificate_failure(exc)
    if verify is not None:
        return (
            f"Valkey's TLS certificate was not trusted ({verify}; check the CA file in"
            " VALKEY_URL's ssl_ca_certs, and ssl_check_hostname)"
        )
    if _in_chain(exc, FileNotFoundError) or "No such file or directory" in str(exc):
        # ssl_ca_certs (or ssl_certfile, ssl_keyfile) names no file: the context fails
        # before any connection (TCP reports no such error; a Sentinel's comes as text).
        return "a file in VALKEY_URL's TLS options is missing (ssl_ca_certs, ssl_certfile...)"
    if _in_chain(exc, ssl.SSLError):
        return "the TLS handshake with Valkey failed (VALKEY_URL is rediss:// or valkeys://)"
    if tls is False and _closed_by_server(exc):
        return (
            "Valkey unreachable: it closed the connection at once (if it accepts only TLS,"
            " as managed Valkey usually does, VALKEY_URL must start with rediss:// or"
            " valkeys://)"
        )
    if isinstance(exc, SentinelAuthenticationError):
        return (
            "the Valkey Sentinels refused authentication (check VALKEY_SENTINEL_PASSWORD"
            " and VALKEY_SENTINEL_USERNAME)"
        )
    if isinstance(exc, AuthenticationError):
        return "Valkey refused authentication (check the credentials in VALKEY_URL)"
    return "Valkey unreachable"


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and what it wraps: valkey-py raises its ConnectionError from within the
    `except` that caught the OSError (ssl.SSLCertVerificationError...), so `__context__`."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _in_chain(exc: BaseException | None, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _certificate_failure(exc: BaseException | None) -> str | None:
    """The verification error ("certificate verify failed: ...") when the server's TLS
    certificate was refused. Sentinels' errors reach us as text only (valkey-py's
    MasterNotFoundError lists each Sentinel's error), hence the text match."""
    for e in _chain(exc):
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {e.verify_message}"
        found = _VERIFY_FAILED.search(str(e))
        if found is not None:
            return f"certificate verify failed: {found[1]}"
    return None


# "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: <why> (_ssl.c:1006)"
_VERIFY_FAILED = re.compile(r"certificate verify failed: (.+?)[\s.]*(?:\(_ssl\.c:\d+\)|$)")


def _closed_by_server(exc: BaseException | None) -> bool:
    """The server hung up on a new connection (reset, or EOF before any reply): what a
    TLS-only port does to a client that speaks plaintext; refused and timed out are not."""
    closed = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
    return any(
        isinstance(e, closed) or "Connection closed by server" in str(e) for e in _chain(exc)
    )


def _sentinel_options(
    target: ValkeyEndpoint, primary: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """How each Sentinel is asked: `timeout` to connect and for each reply, the Sentinels'
    own credentials, and TLS as `target.sentinel_tls` says (None: when the primary's URL
    is TLS, with its ssl_* options: one CA for the whole topology, as is usual)."""
    options: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if target.sentinel_password is not None:
        options["password"] = target.sentinel_password
        options["username"] = target.sentinel_username
    tls = bool(primary.get("ssl")) if target.sentinel_tls is None else target.sentinel_tls
    if tls:
        options["ssl"] = True
        options.update({k: v for k, v in primary.items() if k.startswith("ssl_")})
    return options


def sentinel_client(target: ValkeyEndpoint, options: dict[str, Any], timeout: float) -> Any:
    """A pooled client of the Sentinels' primary; `options` are the connection options a
    plain client would get (`client.connect`). The Sentinels are asked as
    `_sentinel_options` says; the URL's credentials are the primary's only."""
    kwargs: dict[str, Any] = dict(parse_url(target.url))
    kwargs.pop("host", None)
    kwargs.pop("port", None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True  # SentinelConnectionPool picks its TLS connection class
    sentinel_kwargs = _sentinel_options(target, kwargs, timeout)
    if not kwargs.get("ssl"):  # a redis:// primary: ssl_* were for the Sentinels only
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("ssl_")}
    kwargs.update(options)
    sentinels = _Sentinels(list(target.sentinels), sentinel_kwargs, **kwargs)
    return sentinels.master_for(
        target.sentinel_master,
        valkey_class=_SentinelManagedValkey,
        connection_pool_class=_FollowingPool,
    )
