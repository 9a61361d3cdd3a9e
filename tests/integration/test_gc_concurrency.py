"""Four writers upload versions that share chunks while versions are forgotten and collections
with repacking run back to back (the short variant of ``python -m bench --only gc_stress``):
every acknowledged version that was not forgotten reads back byte-identical, no writer ever
fails, and ``admin check --read-data`` is clean."""

from __future__ import annotations

from gc_helpers import FAST_GC
from server_fixtures import RunningServer, drop_prefix, new_prefix

from bench.gc_stress import stress


def test_writers_never_lose_a_version_while_gc_and_repack_run(redis_url, tmp_path):
    prefix = new_prefix()
    with RunningServer(tmp_path / "data", redis_url, prefix, extra_env=FAST_GC).start() as server:
        try:
            r = stress(server.address, server.redis_url, prefix, cycles=6)
        finally:
            drop_prefix(redis_url, prefix)
    assert r.writer_errors == [] and r.mismatches == []
    assert r.check == (0, 0, 0)
    assert r.cycles == 6 and r.versions_forgotten > 0 and r.chunks_dropped > 0 and r.freed_bytes > 0
    assert r.versions_verified >= 4
