"""py-spy flamegraphs for `run.py --profile`: where the time goes on the paths that miss a
target (the heartbeat's app process; find-available in the harness process)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Recording:
    """`py-spy record` of one process for a fixed time, written as an SVG flamegraph (or
    as raw collapsed stacks)."""

    def __init__(
        self,
        exe: str,
        pid: int,
        out: Path,
        seconds: float,
        rate: int = 100,
        fmt: str = "flamegraph",  # or "raw": collapsed stacks, one "frames count" a line
    ) -> None:
        self.out = out
        self.seconds = seconds
        self.proc = subprocess.Popen(  # noqa: S603
            [
                exe,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                str(rate),
                "--format",
                fmt,
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait(self) -> str | None:
        """The SVG's path, or None (with py-spy's complaint on stderr printed)."""
        try:
            _, err = self.proc.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if self.proc.returncode != 0 or not self.out.exists():
            print(f"py-spy failed: {err.decode(errors='replace')[-500:]}", flush=True)
            return None
        return str(self.out)
