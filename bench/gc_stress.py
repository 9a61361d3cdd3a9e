"""Garbage collection under load: writers upload versions sharing chunks while versions are
forgotten and collections (with repacking) run back to back; afterwards every acknowledged
version that was not forgotten must read back byte-identical and the store must check clean.

``python -m bench --only gc_stress [--cycles N]`` runs it long; the test suite runs a short
variant (tests/integration/test_gc_concurrency.py). Forgetting removes version records straight
from the metadata (:func:`forget_versions`), which is all a collection looks at.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from dataclasses import dataclass, field

import redis

from cli.client import StratusClient

BASE_SIZE = 3 << 19  # 1.5 MiB shared by every writer at the start


def forget_versions(redis_url: str, prefix: str, ns: str, path: str, keep: set[int]) -> list[int]:
    """Delete every version record of ``path`` in ``ns`` except ``keep``; returns those deleted."""
    client = redis.Redis.from_url(redis_url)
    try:
        key = f"{prefix}:{{{ns}}}:v:{path}".encode()
        gone = sorted(int(v) for v in client.hkeys(key) if int(v) not in keep)
        if gone:
            client.hdel(key, *[str(v) for v in gone])
        return gone
    finally:
        client.close()


@dataclass
class StressResult:
    """What a stress run did and found."""

    cycles: int = 0
    versions_written: int = 0
    versions_forgotten: int = 0
    versions_verified: int = 0
    freed_bytes: int = 0
    chunks_dropped: int = 0
    writer_errors: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    check: tuple[int, int, int] = (0, 0, 0)  # damaged, missing, awaiting repair after check --read-data
    seconds: float = 0.0


class _Acks:
    """Acknowledged versions per path: version -> SHA-256 (what must read back)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_path: dict[str, dict[int, str]] = {}

    def add(self, path: str, version: int, data: bytes) -> None:
        with self.lock:
            self.by_path.setdefault(path, {})[version] = hashlib.sha256(data).hexdigest()

    def forgettable(self, path: str, keep_last: int) -> set[int]:
        """Acknowledged versions older than the newest ``keep_last``, taken off the record."""
        with self.lock:
            known = self.by_path.get(path, {})
            newest = max(known, default=0)
            old = {v for v in known if v <= newest - keep_last}
            for v in old:
                del known[v]
            return old


def _writer(address: str, k: int, stop: threading.Event, acks: _Acks, result: StressResult) -> None:
    rng = random.Random(k)
    data = bytearray(random.Random(0).randbytes(BASE_SIZE))  # the same start for everyone: shared chunks
    path = f"w{k}.bin"
    with StratusClient.connect(address, insecure=True) as c:
        while not stop.is_set():
            for _ in range(2):
                at = rng.randrange(len(data) - 20_000)
                data[at:at + 20_000] = rng.randbytes(20_000)
            try:
                outcome = c.put_bytes(bytes(data), path)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                result.writer_errors.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            if outcome.error is not None or outcome.version is None:
                result.writer_errors.append(f"{path}: {outcome.status}: {outcome.error}")
                continue
            acks.add(path, outcome.version.version, bytes(data))
            result.versions_written += 1


def stress(
    address: str, redis_url: str, prefix: str, cycles: int, writers: int = 4, keep_last: int = 2
) -> StressResult:
    """Run ``writers`` writer threads against the server at ``address`` (plaintext, one namespace;
    metadata at ``redis_url`` under ``prefix``) while
    ``cycles`` rounds of forget + collection run; then verify (see the module docstring)."""
    started = time.monotonic()
    result, acks, stop = StressResult(), _Acks(), threading.Event()
    threads = [threading.Thread(target=_writer, args=(address, k, stop, acks, result)) for k in range(writers)]
    for t in threads:
        t.start()
    try:
        with StratusClient.connect(address, insecure=True) as c:
            ns = c.info().namespace
            for _ in range(cycles):
                time.sleep(0.5)  # let every writer commit something new
                for k in range(writers):
                    path = f"w{k}.bin"
                    old = acks.forgettable(path, keep_last)
                    if old:
                        newest = max(old)
                        keep = set(range(newest + 1, newest + 10**6))
                        gone = forget_versions(redis_url, prefix, ns, path, keep)
                        result.versions_forgotten += len(gone)
                r = c.collect_garbage()
                result.cycles += 1
                result.freed_bytes += r.freed_bytes
                result.chunks_dropped += r.chunks_dropped
    finally:
        stop.set()
        for t in threads:
            t.join()
    _verify(address, acks, result)
    result.seconds = time.monotonic() - started
    return result


def _verify(address: str, acks: _Acks, result: StressResult) -> None:
    with StratusClient.connect(address, insecure=True) as c:
        for path, versions in acks.by_path.items():
            for version, digest in sorted(versions.items()):
                got = hashlib.sha256(c.get_bytes(path, version=version)).hexdigest()
                result.versions_verified += 1
                if got != digest:
                    result.mismatches.append(f"{path} v{version}")
        check = c.check_store(read_data=True)
        result.check = (check.damaged, check.missing, check.awaiting_repair)
