"""Garbage collection tests: servers that collect quickly, forgetting versions, reading back.

``stratus forget`` is a separate feature; :func:`bench.gc_stress.forget_versions` removes version
records straight from the metadata (what a forget does to them), which is all a collection looks at.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import redis

from bench.gc_stress import forget_versions
from cas.errors import ServerUnavailableError
from cas.pack import list_packs, pack_path
from cli.client import StratusClient
from proto import stratus_pb2 as pb

__all__ = ["FAST_GC", "assert_clean", "chunks_of", "forget_versions", "gc_or_killed", "history", "missing",
           "pack_bytes", "wait_condemned"]

# Collect within seconds: grace 1 s, lock 2 s, small packs (so a few MiB make several), every pack
# holding a dead record rewritten, no background collection unless a test asks.
FAST_GC = {"STRATUS_GC_GRACE_S": "1", "STRATUS_GC_LOCK_TTL_S": "2", "STRATUS_GC_INTERVAL_S": "0",
           "STRATUS_PACK_SIZE": str(1 << 20), "STRATUS_GC_REPACK_LIVE_FRACTION": "1.0"}


def wait_condemned(server: object, ns: str, timeout: float = 30) -> None:
    """Wait until a running collection has condemned chunks of ``ns`` (it is in its grace period)."""
    client = redis.Redis.from_url(server.redis_url)  # type: ignore[attr-defined]
    key = f"{server.prefix}:{{{ns}}}:condemned"  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    try:
        while not client.exists(key):
            assert time.monotonic() < deadline, "no collection condemned anything"
            time.sleep(0.02)
    finally:
        client.close()


def pack_bytes(data_dir: Path) -> int:
    """Bytes of every pack file of a data dir."""
    return sum(pack_path(data_dir, p).stat().st_size for p in list_packs(data_dir))


def assert_clean(client: StratusClient) -> None:
    """``stratus admin check --read-data`` has nothing to complain about."""
    r = client.check_store(read_data=True)
    assert (r.damaged, r.missing, r.awaiting_repair) == (0, 0, 0), r


def gc_or_killed(client: StratusClient) -> bool:
    """Run a collection; False if the server died during it (a crash test's kill)."""
    try:
        client.collect_garbage()
    except ServerUnavailableError:
        return False
    return True


def history(seed: int, size: int = 3 << 20, versions: int = 4, change: float = 0.05) -> list[bytes]:
    """Versions of a file, each changing ``change`` of the previous one in a few places."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    out = [bytes(data)]
    for _ in range(versions - 1):
        for _ in range(4):
            at = rng.randrange(size)
            span = int(size * change / 4)
            data[at:at + span] = rng.randbytes(len(data[at:at + span]))
        out.append(bytes(data))
    return out


def chunks_of(client: StratusClient, path: str, version: int = 0) -> set[bytes]:
    req = pb.GetManifestRequest(path=path, at=pb.VersionSelector(version=version))
    return {c.digest for c in client.stub.GetManifest(req).manifest.chunks}


def missing(client: StratusClient, digests) -> set[bytes]:
    return set(client.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=list(digests))).missing)
