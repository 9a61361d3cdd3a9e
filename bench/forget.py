"""Retention: what ``stratus forget`` costs, next to ``restic forget``, and what the gaps it leaves
cost the reads, before and after, in the same run.

* ``stratus forget PREFIX --keep-last 3 --keep-yearly 5`` (and its ``--dry-run``) as a process over
  ``PATHS`` paths of ``VERSIONS`` versions each (it keeps the 3 newest and, the yearly rule having
  counts left, the oldest): seconds and versions removed per second.
* ``restic forget --keep-last 3`` as a process over ``SNAPSHOTS`` snapshots of one small file
  (when restic is installed): seconds and snapshots removed per second.
* What gaps cost reads: ``Stat`` as of a time and ``ListVersions`` of a path a forget left gaps in
  (read through its timeline) against a path with as many versions and no gaps (a binary search
  over version numbers), calls alternating between the two, median and p99 over ``READS`` each.

Run alone with ``python -m bench.forget``, or as the ``forget`` group of ``python -m bench``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import BenchServer
from bench.startup import stratus_command
from cli.client import StratusClient
from proto import stratus_pb2 as pb

PATHS, VERSIONS, SNAPSHOTS, READS = 20, 40, 30, 300


def _timed(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-400:]}")
    return time.perf_counter() - t0, done.stdout


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"median_ms": statistics.median(samples), "p99_ms": samples[int(len(samples) * 0.99) - 1]}


def _alternating(a: object, b: object, runs: int = READS) -> tuple[dict[str, float], dict[str, float]]:
    """Latency of two calls, timed turn by turn so the machine's load hits both alike."""
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(runs):
        for call, out in ((a, samples[0]), (b, samples[1])):
            t0 = time.perf_counter()
            call()  # type: ignore[operator]
            out.append((time.perf_counter() - t0) * 1000)
    return _summary(samples[0]), _summary(samples[1])


def _gap_reads(client: StratusClient) -> dict[str, dict[str, dict[str, float]]]:
    """Reads of ``ab/gaps`` (versions 2 and 3 of VERSIONS forgotten) against ``ab/plain`` (VERSIONS - 2
    versions, no gaps)."""
    for n in range(VERSIONS):
        client.put_bytes(b"gaps %d" % n, "ab/gaps")
        if n < VERSIONS - 2:
            client.put_bytes(b"plain %d" % n, "ab/plain")
    # keeps the 37 newest and (the yearly rule having a count left) the oldest: 2 and 3 go
    list(client.forget("ab/gaps", pb.RetentionPolicy(keep_last=VERSIONS - 3, keep_yearly=2)))
    at = {p: client.list_versions(p)[len(client.list_versions(p)) // 2].created_ms for p in ("ab/gaps", "ab/plain")}
    out: dict[str, dict[str, dict[str, float]]] = {}
    gaps, plain = _alternating(lambda: client.stat("ab/gaps", as_of_ms=at["ab/gaps"]),
                               lambda: client.stat("ab/plain", as_of_ms=at["ab/plain"]))
    out["stat_as_of"] = {"gaps": gaps, "no_gaps": plain}
    gaps, plain = _alternating(lambda: client.list_versions("ab/gaps"), lambda: client.list_versions("ab/plain"))
    out["list_versions"] = {"gaps": gaps, "no_gaps": plain}
    return out


def ours(root: Path) -> dict:
    """Forget through ``stratus forget`` against a server of its own, reads before and after."""
    server = BenchServer(root / "data").start()
    try:
        client, _ = server.client()
        for n in range(VERSIONS):
            for p in range(PATHS):
                client.put_bytes(b"version %d of file %d" % (n, p), f"nightly/f{p:03d}")
        reads = _gap_reads(client)
        cmd = [*stratus_command(), *server.client_args(), "--json", "forget", "nightly/", "--keep-last", "3",
               "--keep-yearly", "5"]
        env = {**os.environ, "STRATUS_CACHE_DIR": str(root / "cache")}
        dry, _ = _timed([*cmd, "--dry-run"], env)
        seconds, out = _timed(cmd, env)
        removed = json.loads(out)["summary"]["removed"]
        client.close()
        return {"paths": PATHS, "versions": PATHS * VERSIONS, "removed": removed, "dry_run_s": dry,
                "forget_s": seconds, "removed_per_s": removed / seconds, "reads": reads}
    finally:
        server.stop()


def restic(root: Path) -> dict | None:
    """``restic forget --keep-last 3`` over ``SNAPSHOTS`` snapshots of one small file (None without restic)."""
    if shutil.which("restic") is None:
        return None
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(root / "repo"),
           "RESTIC_CACHE_DIR": str(root / "restic-cache")}
    _timed(["restic", "init", "--repository-version", "2"], env)
    source = root / "src"
    source.mkdir()
    for n in range(SNAPSHOTS):
        (source / "file").write_bytes(b"version %d" % n)
        _timed(["restic", "backup", "--host", "bench", "src"], env, root)
    seconds, _ = _timed(["restic", "forget", "--keep-last", "3"], env)
    removed = SNAPSHOTS - 3
    return {"snapshots": SNAPSHOTS, "removed": removed, "forget_s": seconds, "removed_per_s": removed / seconds}


def run(ws: object = None) -> dict:
    """The group's figures (``ws``: the bench workspace, or None for a temporary folder)."""
    root = Path(tempfile.mkdtemp(prefix="stratus-forget-")) if ws is None else ws.dir("forget")  # type: ignore[attr-defined]
    try:
        result = {"stratusvault": ours(root / "ours"), "restic": restic(root / "restic")}
    finally:
        if ws is None:
            shutil.rmtree(root, ignore_errors=True)
    if result["restic"]:
        result["removed_per_s_vs_restic"] = result["stratusvault"]["removed_per_s"] / result["restic"]["removed_per_s"]
    return result


def _print(r: dict) -> None:
    s = r["stratusvault"]
    print(f"stratus forget: {s['removed']} of {s['versions']} versions in {s['paths']} paths removed in "
          f"{s['forget_s']:.2f} s ({s['removed_per_s']:.0f}/s); --dry-run {s['dry_run_s']:.2f} s")
    if r["restic"]:
        t = r["restic"]
        print(f"restic forget:  {t['removed']} of {t['snapshots']} snapshots removed in {t['forget_s']:.2f} s "
              f"({t['removed_per_s']:.0f}/s); stratus/restic removal rate: {r['removed_per_s_vs_restic']:.1f}x")
    for name, r in s["reads"].items():
        b, a = r["no_gaps"], r["gaps"]
        ratio = a["median_ms"] / b["median_ms"]
        print(f"{name} ({VERSIONS - 2} versions): median {b['median_ms']:.2f} ms without gaps, {a['median_ms']:.2f} ms "
              f"with gaps (x{ratio:.2f}); p99 {b['p99_ms']:.2f} / {a['p99_ms']:.2f} ms")


if __name__ == "__main__":
    _print(run())
    sys.exit(0)
