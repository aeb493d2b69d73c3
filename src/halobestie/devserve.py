"""Serving for `halobestie dev`: uvicorn, plus the demo traffic in a thread of its own.

On SIGINT or SIGTERM the demo traffic is stopped first, while the server still answers,
so that its farewell reaches the server (simulated mitras go offline, searches are
withdrawn, deactivated mitras reactivated); then uvicorn shuts down gracefully and the
command returns normally, with no traceback, so the caller stops the embedded servers. A
second signal shuts down at once, a third forces it (as plain uvicorn does).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Generator
from types import FrameType

import uvicorn

from .logs import get_logger
from .simulator import DemoConfig, Simulation

log = get_logger(__name__)

# The longest the server waits for the traffic's farewell after a signal.
DRAIN_SECONDS = 12.0
STARTUP_FAILURE = 3  # uvicorn's exit status when the app could not start


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
    def __init__(self, config: uvicorn.Config, traffic: DemoTraffic | None) -> None:
        super().__init__(config)
        self.traffic = traffic
        self._drain_until: float | None = None

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
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def serve_dev(config: uvicorn.Config, traffic: DemoTraffic | None) -> bool:
    """Serve until SIGINT/SIGTERM; the traffic (if any) starts now and waits for the
    server to answer. False when the app could not start."""
    server = DevServer(config, traffic)
    if traffic is not None:
        traffic.start()
    try:
        server.run()
    finally:
        if traffic is not None:
            traffic.stop()
            traffic.join(DRAIN_SECONDS)
    return server.started
