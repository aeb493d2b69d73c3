"""Serving for `halobestie dev`: uvicorn, plus the demo traffic in a thread of its own.

On SIGINT or SIGTERM the demo traffic is stopped first, while the server still answers,
so that its farewell reaches the server (simulated mitras go offline, searches are
withdrawn, deactivated mitras reactivated); then uvicorn shuts down gracefully and the
command returns normally, with no traceback, so the caller stops the embedded servers. A
second signal shuts down at once, a third forces it (as plain uvicorn does).

Before anything starts, the command takes its port (`bind_port`: the socket uvicorn then
serves on, so nothing can take the port between the check and the serving) and its data
folder (`data_dir_lock`), and refuses if either is taken: a second run on the same folder
would otherwise adopt the first run's Postgres and stop it on its way out. The banner
(`on_serving`) is printed once uvicorn serves on that socket, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType

import uvicorn

from .logs import get_logger
from .simulator import DemoConfig, Simulation

log = get_logger(__name__)

# The longest the server waits for the traffic's farewell after a signal.
DRAIN_SECONDS = 12.0
STARTUP_FAILURE = 3  # uvicorn's exit status when the app could not start
LOCK_FILE = "dev.lock"  # in the data folder; holds the pid of the run that has it


class Refused(Exception):
    """The port or the data folder is taken; the message says which, in one line."""


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `data_dir`/dev.lock for the life of the block, or raise
    Refused at once when another process holds it. The kernel drops the lock with its
    holder however that ends (even SIGKILL), so a crashed run never blocks the next; the
    descriptor is not inherited (PEP 446), so the servers started meanwhile never hold it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise Refused(
            f"the data folder {data_dir} is in use by another `halobestie dev` (pid {holder});"
            " stop it, or pass another --data-dir"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless


def stop_signals() -> tuple[signal.Signals, ...]:
    """The signals that stop `halobestie dev` like Ctrl-C: SIGINT, SIGTERM, and SIGHUP (its
    terminal closed; by default it would kill the command and leave the embedded Postgres
    running) unless the command was started ignoring it (`nohup`)."""
    hangup = () if signal.getsignal(signal.SIGHUP) == signal.SIG_IGN else (signal.SIGHUP,)
    return (signal.SIGINT, signal.SIGTERM, *hangup)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """The stop signals (SIGINT, SIGTERM, SIGHUP) are noted, not acted on, inside the block:
    the list it yields holds those that arrived, for the caller to act on once it is done."""
    received: list[int] = []
    handled = stop_signals()
    originals = {sig: signal.signal(sig, lambda sig, _: received.append(sig)) for sig in handled}
    try:
        yield received
    finally:
        for sig, handler in originals.items():
            signal.signal(sig, handler)


def bind_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) for uvicorn to serve on, as uvicorn binds its own
    (SO_REUSEADDR, which still refuses a port another socket listens on). Raises Refused
    when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise Refused(
                f"port {port} on {host} is taken (another server is running there);"
                " stop it, or pass another --port"
            ) from None
        raise Refused(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


class DemoTraffic:
    """A Simulation running in its own thread and event loop (never the server's)."""

    def __init__(self, config: DemoConfig) -> None:
        self.simulation = Simulation(config)
        self.thread = threading.Thread(target=self._main, name="demo-traffic", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self.simulation.run())
        except Exception:  # logged, never a bare traceback on the terminal
            log.exception("demo_traffic_failed")

    def start(self) -> None:
        self.thread.start()

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def stop(self) -> None:
        self.simulation.stop_threadsafe()

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)


class DevServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        traffic: DemoTraffic | None,
        on_serving: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.traffic = traffic
        self.on_serving = on_serving
        self._drain_until: float | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's startup runs the lifespan (runtime.start: seed, watchers) and then
        # listens: once it returns with `started`, a request is answered.
        await super().startup(sockets)
        if self.started and not self.should_exit and self.on_serving is not None:
            self.on_serving()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        traffic = self.traffic
        if traffic is not None and self._drain_until is None and not traffic.done:
            # Keep serving while the traffic says goodbye; on_tick exits after it.
            self._drain_until = time.monotonic() + DRAIN_SECONDS
            traffic.stop()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and not self.should_exit:
            assert self.traffic is not None
            if self.traffic.done or time.monotonic() > self._drain_until:
                self.should_exit = True
        return await super().on_tick(counter)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, without raising the signal again after the shutdown: the dev
        command still has its embedded servers to stop, and a SIGTERM re-raised with the
        default handler would kill the process before it does."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = stop_signals()
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def serve_dev(
    config: uvicorn.Config,
    traffic: DemoTraffic | None,
    sock: socket.socket | None = None,
    on_serving: Callable[[], None] | None = None,
) -> bool:
    """Serve until SIGINT/SIGTERM, on `sock` (from bind_port) when given; `on_serving` is
    called once requests are answered. The traffic (if any) starts now and waits for the
    server to answer. False when the app could not start."""
    server = DevServer(config, traffic, on_serving)
    if traffic is not None:
        traffic.start()
    try:
        server.run(sockets=None if sock is None else [sock])
    finally:
        if traffic is not None:
            traffic.stop()
            traffic.join(DRAIN_SECONDS)
    return server.started
