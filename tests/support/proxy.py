"""Asyncio TCP fault-injection proxy for resilience tests (toxiproxy is not available).

Clients connect to 127.0.0.1:<port>; traffic goes to a TCP (host, port) target or to a unix
socket path (pgserver's Postgres listens on a unix socket only). Faults:

* cut():       the server is down: open connections are dropped, new ones are refused.
* blackhole(): a network partition: connections are accepted but nothing is forwarded and
               nothing comes back, so clients run into their own timeouts. Bytes in flight
               are held, not lost (as TCP would deliver them once the partition heals).
* restore():   normal forwarding again.

With `tls` (a server-side ssl.SSLContext, e.g. tests/support/tls.py), clients speak TLS to
the proxy and the proxy forwards plaintext to the target: a TLS-terminating front, as a
managed Valkey offering has one, before a server built without TLS. The handshake is
asyncio's, done before a connection is handed over, so a blackholed TLS proxy still
completes handshakes and then answers nothing; a failed handshake (a client that does not
trust the certificate, a client speaking plaintext) just closes that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from pathlib import Path
from typing import Literal, Self

Target = tuple[str, int] | str | Path
Mode = Literal["forward", "cut", "blackhole"]

_CHUNK = 64 * 1024


class FaultProxy:
    def __init__(
        self,
        target: Target,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._target = target
        self._tls = tls
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._mode: Mode = "forward"
        # Set while bytes may flow; every pump waits on it before delivering anything.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._accepted = 0

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def connections_accepted(self) -> int:
        """Client connections accepted so far (also counts those accepted while blackholed)."""
        return self._accepted

    @property
    def active_connections(self) -> int:
        return len(self._handlers)

    async def start(self) -> int:
        """Listen (on a free port unless one was given) and return the port."""
        await self._listen()
        return self.port

    async def cut(self) -> None:
        self._mode = "cut"
        # Closing the listener makes new connects fail with ECONNREFUSED, like a dead server;
        # restore() binds the same port again.
        await self._close(drop_connections=True)

    async def blackhole(self) -> None:
        self._mode = "blackhole"
        self._flowing.clear()
        await self._listen()  # coming from cut(): accept again, but still answer nothing

    async def restore(self) -> None:
        self._mode = "forward"
        await self._listen()
        self._flowing.set()

    async def stop(self) -> None:
        self._mode = "cut"
        await self._close(drop_connections=True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, ssl=self._tls
            )
            self._port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self, *, drop_connections: bool) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        if drop_connections:
            for writer in list(self._writers):
                writer.transport.abort()
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()  # also wakes handlers parked on the blackhole
            await asyncio.gather(*handlers, return_exceptions=True)
        if server is not None:
            # 3.12+ waits here for every accepted connection to be gone: bounded, just in case
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if isinstance(self._target, tuple):
            return await asyncio.open_connection(*self._target)
        return await asyncio.open_unix_connection(str(self._target))

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._accepted += 1
        self._handlers.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self._mode == "cut":  # raced with cut(): behave as if the listener were gone
                return
            await self._flowing.wait()  # blackholed: the server is never even contacted
            upstream_r, upstream_w = await self._connect()
            self._writers.add(upstream_w)
            await asyncio.gather(
                self._pump(client_r, upstream_w, client_w),
                self._pump(upstream_r, client_w, upstream_w),
            )
        except OSError:
            pass  # target unreachable: the client just sees its connection closed
        except asyncio.CancelledError:
            # Only cut()/stop() cancel us. Ending normally matters: on 3.11 asyncio's
            # start_server callback calls task.exception() and logs an error for a cancelled task.
            pass
        finally:
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
            self._handlers.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, src_w: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await src.read(_CHUNK):
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
            await self._flowing.wait()  # even a FIN must not cross a partition
            # Pass the half-close on, so protocols see EOF exactly as without the proxy.
            if dst.can_write_eof() and not dst.is_closing():
                dst.write_eof()
            elif not dst.can_write_eof():
                # TLS to the client has no half-close: close it, so the client sees the
                # server's end (its read side then ends the other pump).
                dst.close()
        except OSError:
            # A reset on either side kills the whole connection, as it would end to end;
            # aborting both transports also ends the pump running the other way.
            dst.transport.abort()
            src_w.transport.abort()
