"""kill -9 of the server at each phase of a garbage collection: no live version is lost, the next
collection finishes the work, and ``admin check --read-data`` finds nothing wrong."""

from __future__ import annotations

import random
import signal

import pytest
from gc_helpers import FAST_GC, assert_clean, chunks_of, forget_versions, gc_or_killed, history, missing, pack_bytes
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cli.client import StratusClient
from service.gc import KILL_ENV

PHASES = ["condemned", "swept", "dropped", "repack-copied", "repack-switched"]


@pytest.mark.parametrize("phase", PHASES)
def test_kill_during_gc_loses_nothing_and_the_next_gc_finishes(redis_url, tmp_path, phase):
    prefix = new_prefix()
    data_dir = tmp_path / "data"
    doomed = RunningServer(data_dir, redis_url, prefix, extra_env={**FAST_GC, KILL_ENV: phase}).start()
    try:
        with StratusClient.connect(doomed.address, insecure=True) as c:
            ns = c.info().namespace
            # unrelated contents: no version is stored as deltas of another, so the garbage is collectable
            versions = [random.Random(n).randbytes(3 << 20) for n in range(4)]
            for data in versions:
                c.put_bytes(data, "db.bin")
            c.put_bytes(versions[0], "copy-of-v1")  # shares every chunk of a forgotten version
            garbage = set().union(*(chunks_of(c, "db.bin", v) for v in (1, 2, 3))) - chunks_of(c, "db.bin", 4)
            garbage -= chunks_of(c, "copy-of-v1")
            forget_versions(doomed.redis_url, doomed.prefix, ns, "db.bin", keep={4})
            before = pack_bytes(data_dir)
            assert not gc_or_killed(c)
        assert doomed.stop(timeout=10) == -signal.SIGKILL
        with RunningServer(data_dir, redis_url, prefix, extra_env=FAST_GC).start() as server, \
                StratusClient.connect(server.address, insecure=True) as c:
            assert c.get_bytes("db.bin") == versions[3] and c.get_bytes("copy-of-v1") == versions[0]
            assert_clean(c)  # even before the collection is finished
            r = c.collect_garbage()
            assert r.resumed == (phase in ("condemned", "swept", "dropped"))
            c.collect_garbage()  # whatever the interrupted repack left is reclaimed by the next one
            assert missing(c, garbage) == garbage
            assert c.get_bytes("db.bin") == versions[3] and c.get_bytes("copy-of-v1") == versions[0]
            assert_clean(c)
            assert pack_bytes(data_dir) < before
    finally:
        doomed.kill()
        drop_prefix(redis_url, prefix)


@pytest.mark.parametrize("phase", ["rebase-written", "rebase-switched"])
def test_kill_while_re_encoding_delta_records_loses_nothing(redis_url, tmp_path, phase):
    prefix = new_prefix()
    data_dir = tmp_path / "data"
    doomed = RunningServer(data_dir, redis_url, prefix, extra_env={**FAST_GC, KILL_ENV: phase}).start()
    try:
        with StratusClient.connect(doomed.address, insecure=True) as c:
            ns = c.info().namespace
            versions = history(21, size=2 << 20, versions=6, change=0.2)  # uploaded with delta hints
            for data in versions:
                c.put_bytes(data, "db.bin")
            forget_versions(doomed.redis_url, doomed.prefix, ns, "db.bin", keep={5, 6})
            assert not gc_or_killed(c)
        assert doomed.stop(timeout=10) == -signal.SIGKILL
        with RunningServer(data_dir, redis_url, prefix, extra_env=FAST_GC).start() as server, \
                StratusClient.connect(server.address, insecure=True) as c:
            for v in (5, 6):
                assert c.get_bytes("db.bin", version=v) == versions[v - 1]
            assert_clean(c)
            r = c.collect_garbage()
            assert r.resumed and r.chunks_dropped > 0
            c.collect_garbage()
            for v in (5, 6):
                assert c.get_bytes("db.bin", version=v) == versions[v - 1]
            assert_clean(c)
    finally:
        doomed.kill()
        drop_prefix(redis_url, prefix)
