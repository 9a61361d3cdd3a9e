"""Garbage collection: 30 daily versions of one file changing 5% a day, the 23 oldest forgotten,
then one collection (``python -m bench --only gc``).

Measured: bytes the collection freed against what the forgotten versions alone held (the dry
run's record bytes of the chunks no kept version references), its time, the disk before and
after, and the throughput of uploads running during the collection as a ratio of the same uploads
without one (target >= 0.7). restic gets the same 30 days (one ``backup`` a day) and
``forget --keep-last 7 --prune`` is timed on it; StratusVault forgets with the same rule (the
``Forget`` call of ``stratus forget --keep-last 7``).

Also ``gc_stress`` (``--cycles N``): :mod:`bench.gc_stress` for longer than the test suite runs it.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench import gc_stress
from bench.datasets import MIB, Workspace, write_mixed
from bench.servers import BenchServer, disk_usage, settle
from cli.client import StratusClient
from proto import stratus_pb2 as pb

DAYS, KEEP, CHANGE = 30, 7, 0.05
GRACE_S = "1"  # the minimum: the grace period is idle time, not work
UPLOAD_MIB = 16


def _edit(path: Path, rng: random.Random, fraction: float) -> None:
    """Overwrite ``fraction`` of the file in 20 spans spread over it (a day's changes)."""
    size = path.stat().st_size
    span = int(size * fraction / 20)
    with open(path, "r+b") as f:
        for _ in range(20):
            f.seek(rng.randrange(size - span))
            f.write(rng.randbytes(span))


def _embedded(server: BenchServer) -> tuple[str, str]:
    """(redis url, key prefix) of a bench server's embedded Valkey."""
    return f"unix://{server.data_dir.absolute()}/valkey.sock", "sv"


def _restic(work: Path) -> dict[str, str]:
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(work / "restic"),
           "RESTIC_CACHE_DIR": str(work / "restic-cache"), "RESTIC_COMPRESSION": "auto"}
    subprocess.run(["restic", "init", "--repository-version", "2"], env=env, check=True, capture_output=True)
    return env


def _uploads(client: StratusClient, seconds: float, tag: str) -> float:
    """MiB/s of back-to-back uploads of new random content for ``seconds``."""
    done, start = 0, time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds:
        client.put_bytes(os.urandom(UPLOAD_MIB * MIB), f"load/{tag}-{n}")
        done += UPLOAD_MIB
        n += 1
    return done / (time.perf_counter() - start)


def run(ws: Workspace) -> dict:
    """The ``gc`` group (see the module docstring). The store is built once, then copied: one copy
    is collected alone (bytes, time), the other while uploads run (their throughput)."""
    size = ws.sizes.gc_file
    work = ws.dir("gc")
    source = work / "db.bin"
    write_mixed(source, size, seed=11)
    restic = _restic(work) if shutil.which("restic") else None
    out: dict = {"file_bytes": size, "days": DAYS, "kept": KEEP, "change": CHANGE}
    server = _server(work / "data")
    try:
        client, _ = server.client()
        rng = random.Random(3)
        ws.log(f"gc: {DAYS} daily versions of {size // MIB} MiB")
        for day in range(DAYS):
            if day:
                _edit(source, rng, CHANGE)
            client.put_file(source, "db.bin")
            if restic:
                subprocess.run(["restic", "backup", "--host", "bench", "db.bin"], cwd=work, env=restic,
                               check=True, capture_output=True)
        removed = sum(r.removed for r in client.forget("", pb.RetentionPolicy(keep_last=KEEP)))
        assert removed == DAYS - KEEP, f"forget removed {removed} versions"
        out["expected_freed_bytes"] = client.collect_garbage(dry_run=True).dropped_bytes
        client.close()
    finally:
        server.stop()
    shutil.copytree(work / "data", work / "data-load", symlinks=True, ignore=shutil.ignore_patterns("*.sock"))
    out.update(_collect_alone(work / "data", source))
    out.update(_collect_under_load(work / "data-load"))
    out["freed_vs_expected"] = out["freed_bytes"] / max(1, out["expected_freed_bytes"])
    out["upload_ratio_during_gc"] = out["upload_mib_s_during_gc"] / out["upload_mib_s_alone"]
    if restic:
        out.update(_restic_prune(work, restic))
    ws.log(f"gc: {out}")
    return out


def _server(data_dir: Path) -> BenchServer:
    return BenchServer(data_dir, env={"STRATUS_GC_GRACE_S": GRACE_S, "STRATUS_GC_INTERVAL_S": "0"}).start()


def _collect_alone(data_dir: Path, source: Path) -> dict:
    """One collection with nothing else running: time, bytes freed, disk before and after."""
    server = _server(data_dir)
    try:
        client, _ = server.client()
        settle()
        before = server.disk()[0]
        t0 = time.perf_counter()
        r = client.collect_garbage()
        seconds = time.perf_counter() - t0
        after = server.disk()[0]
        check = client.check_store(read_data=True)
        result = {
            "gc_seconds": seconds, "grace_seconds": float(GRACE_S),
            "freed_bytes": r.freed_bytes, "chunks_dropped": r.chunks_dropped, "dropped_bytes": r.dropped_bytes,
            "packs_rewritten": r.packs_rewritten, "packs_removed": r.packs_removed, "copied_bytes": r.copied_bytes,
            "manifests_removed": r.manifests_removed, "disk_before": before, "disk_after": after,
            "disk_freed": before - after, "restored_identical": client.get_bytes("db.bin") == source.read_bytes(),
            "check_clean": not (check.damaged or check.missing or check.awaiting_repair),
            "reclaimed_in_info": client.info().stats.reclaimed_bytes,
        }
        client.close()
        return result
    finally:
        server.stop()


def _collect_under_load(data_dir: Path) -> dict:
    """Uploads back to back alone, then during one collection (of the same garbage): MiB/s of each."""
    server = _server(data_dir)
    try:
        client, _ = server.client()
        alone = _uploads(client, 10, "alone")
        result: dict = {}

        def collect() -> None:
            with StratusClient.connect(server.address, insecure=True) as admin:
                t0 = time.perf_counter()
                admin.collect_garbage()
                result["gc_seconds_under_load"] = time.perf_counter() - t0

        thread = threading.Thread(target=collect)
        thread.start()
        done, start, n = 0, time.perf_counter(), 0
        while thread.is_alive():
            client.put_bytes(os.urandom(UPLOAD_MIB * MIB), f"load/gc-{n}")
            done += UPLOAD_MIB
            n += 1
        thread.join()
        client.close()
        return {**result, "upload_mib_s_alone": alone, "upload_mib_s_during_gc": done / (time.perf_counter() - start)}
    finally:
        server.stop()


def _restic_prune(work: Path, env: dict[str, str]) -> dict:
    before = disk_usage(work / "restic")[0]
    t0 = time.perf_counter()
    subprocess.run(["restic", "forget", "--keep-last", str(KEEP), "--prune"], env=env, check=True,
                   capture_output=True)
    seconds = time.perf_counter() - t0
    after = disk_usage(work / "restic")[0]
    return {"restic_prune_seconds": seconds, "restic_disk_before": before, "restic_disk_after": after,
            "restic_freed": before - after}


def run_stress(ws: Workspace) -> dict:
    """The ``gc_stress`` group: :func:`bench.gc_stress.stress` for ``--cycles`` cycles."""
    work = ws.dir("gc-stress")
    env = {"STRATUS_GC_GRACE_S": "1", "STRATUS_GC_LOCK_TTL_S": "2", "STRATUS_GC_INTERVAL_S": "0",
           "STRATUS_PACK_SIZE": str(MIB), "STRATUS_GC_REPACK_LIVE_FRACTION": "1.0"}
    server = BenchServer(work / "data", env=env).start()
    try:
        url, prefix = _embedded(server)
        r = gc_stress.stress(server.address, url, prefix, cycles=ws.sizes.gc_cycles)
    finally:
        server.stop()
    out = dict(vars(r))
    out["ok"] = not r.writer_errors and not r.mismatches and r.check == (0, 0, 0)
    ws.log(f"gc_stress: {out}")
    return out
