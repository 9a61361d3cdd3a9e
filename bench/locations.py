"""Redis/Valkey memory and speed of the chunk location index (service/metadata/locations.py).

Usage: ``python -m bench.locations [--redis-url redis://127.0.0.1:6379] [--entries 200000]
[--delta-share 0.3]``

Inserts ``--entries`` index entries for random digests (a share of them delta entries, which
carry a 32-byte base digest), in pipelined batches of 1,000 as publishes do, under a fresh key
prefix; then reports the ``MEMORY USAGE`` of every bucket divided by the entry count (bytes per
stored chunk), the insert and lookup rates, and deletes the prefix. Prints numbers only.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import redis

from cas.pack import RecordType
from cas.packstore import IndexEntry
from service.metadata.locations import RedisLocationIndex

BATCH = 1000


def _entry(n: int, delta: bool) -> IndexEntry:
    base = os.urandom(32) if delta else None
    kind = RecordType.DELTA if delta else RecordType.CHUNK
    return IndexEntry(f"{n // 500:016x}", 16 + (n % 500) * 40_000, 40_000, kind, 1, 1 if delta else 0, base)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.locations", description=__doc__.split("\n")[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    p.add_argument("--entries", type=int, default=200_000)
    p.add_argument("--delta-share", type=float, default=0.3)
    args = p.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    index = RedisLocationIndex(client, f"svbench-{uuid.uuid4().hex[:12]}")
    digests = [os.urandom(32) for _ in range(args.entries)]
    every = int(1 / args.delta_share) if args.delta_share > 0 else 0
    try:
        start = time.perf_counter()
        for i in range(0, len(digests), BATCH):
            index.put_many([(d, _entry(i + j, bool(every) and (i + j) % every == 0))
                            for j, d in enumerate(digests[i:i + BATCH])])
        insert_s = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(0, len(digests), BATCH):
            assert all(index.contains_many(digests[i:i + BATCH]))
        lookup_s = time.perf_counter() - start
        memory = index.memory_bytes()
        buckets = sum(1 for _ in index.buckets())
        info = client.info("server")
        name = "valkey" if "valkey_version" in info else "redis"
        version = info.get("valkey_version") or info.get("redis_version")
        print(f"{name} {version}: {args.entries:,} entries ({args.delta_share:.0%} delta) in {buckets:,} buckets")
        print(f"memory: {memory / 2**20:.1f} MiB, {memory / args.entries:.1f} bytes per chunk")
        print(f"insert: {args.entries / insert_s:,.0f} entries/s; lookup (HEXISTS, pipelined): "
              f"{args.entries / lookup_s:,.0f} digests/s")
    finally:
        for key in list(index.buckets()):
            client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
