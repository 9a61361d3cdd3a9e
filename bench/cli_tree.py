"""Incremental backup of a tree of small files: ``stratus put`` against ``restic backup`` and ``rsync -a``.

Usage: ``python -m bench.cli_tree [--files 10000] [--jobs 8] [--keep]``

Builds a tree of ``--files`` small random files (100 folders, 100 B - 4 KiB each) in a temporary
folder, starts a real server (``python -m service.server`` through :class:`cli.localserver.LocalServer`,
plaintext on loopback, embedded Valkey), then times, as real processes, exactly what a user or a
nightly script runs:

* ``stratus put TREE bench/`` twice: the first run uploads everything, the second finds the tree
  unchanged. The second run is the one that matters for a nightly backup; the target is < 2 s
  for 10,000 files. It stats every file, asks the server for one listing of the prefix, and reads
  no file at all (the state cache vouches for them);
* ``restic backup`` twice into a fresh local repository (skipped with a note when restic is not
  installed);
* ``rsync -a TREE/ COPY/`` twice into a local folder (skipped with a note when rsync is missing).

All runs happen in the same process on the same tree, so they see the same machine load. The
times include each tool's start-up (Python and gRPC imports for stratus, about 0.3 s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli.localserver import LocalServer

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 2.0


def build_tree(root: Path, files: int) -> int:
    total = 0
    for i in range(files):
        folder = root / f"dir{i % 100:03d}"
        if i < 100:
            folder.mkdir(parents=True, exist_ok=True)
        size = 100 + (i * 7919) % 4000
        (folder / f"file{i:05d}.dat").write_bytes(os.urandom(size))
        total += size
    return total


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return seconds, done.stdout


def bench_stratus(tree: Path, work: Path, jobs: int) -> list[tuple[str, float, float, str]]:
    server = LocalServer(work / "server", log=work / "server.log").start()
    address = server.address
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUS_CACHE_DIR": str(work / "cache"),
           "STRATUS_CLIENT_CONFIG": str(work / "none.toml")}
    base = [sys.executable, "-m", "cli.main", "--server", address, "--insecure", "--json", "put", "-j", str(jobs),
            str(tree), "bench/"]
    try:
        time.sleep(0.3)  # the files' timestamps must be older than the racy margin (see cli/statecache.py)
        first, out1 = timed(base, env)
        second, out2 = timed(base, env)
        stats = json.loads(out2)["stats"]
        note = (f"2nd: {stats['files_skipped_unchanged']} skipped, {stats['bytes_read']} B read, "
                f"{stats['bytes_sent']} B sent; in-process {stats['seconds']:.2f} s")
        restore_s, _ = timed([sys.executable, "-m", "cli.main", "--server", address, "--insecure", "--json",
                              "get", "-j", str(jobs), "bench/", str(work / "restored")], env)
        return [("stratus put", first, second, note),
                ("stratus get (restore)", restore_s, float("nan"), "whole tree into an empty folder")]
    finally:
        server.stop()


def bench_restic(tree: Path, work: Path) -> list[tuple[str, float, float, str]]:
    restic = shutil.which("restic")
    if restic is None:
        return [("restic backup", float("nan"), float("nan"), "skipped: restic is not installed")]
    env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(work / "restic-repo")}
    cache = ["--cache-dir", str(work / "restic-cache")]
    timed([restic, "init", *cache], env)
    first, _ = timed([restic, "backup", "--quiet", *cache, str(tree)], env)
    second, _ = timed([restic, "backup", "--quiet", *cache, str(tree)], env)
    version = subprocess.run([restic, "version"], capture_output=True, text=True).stdout.split()[:2]
    return [("restic backup", first, second, " ".join(version) + ", local repository")]


def bench_rsync(tree: Path, work: Path) -> list[tuple[str, float, float, str]]:
    rsync = shutil.which("rsync")
    if rsync is None:
        return [("rsync -a", float("nan"), float("nan"), "skipped: rsync is not installed")]
    dest = work / "rsync-copy"
    first, _ = timed([rsync, "-a", f"{tree}/", f"{dest}/"], dict(os.environ))
    second, _ = timed([rsync, "-a", f"{tree}/", f"{dest}/"], dict(os.environ))
    return [("rsync -a", first, second, "local copy (no history, no dedup)")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sv-bench-tree-"))
    try:
        tree = work / "tree"
        total = build_tree(tree, args.files)
        print(f"tree: {args.files} files, {total / 1024 / 1024:.1f} MiB in {tree}", flush=True)
        rows = bench_stratus(tree, work, args.jobs) + bench_restic(tree, work) + bench_rsync(tree, work)
        print(f"\n{'tool':<24}{'1st run':>10}{'2nd run':>10}   notes")
        for name, first, second, note in rows:
            f = "-" if first != first else f"{first:.2f} s"
            s = "-" if second != second else f"{second:.2f} s"
            print(f"{name:<24}{f:>10}{s:>10}   {note}")
        second_put = rows[0][2]
        verdict = "met" if second_put < TARGET_SECONDS else "MISSED"
        print(f"\nunchanged-tree target (< {TARGET_SECONDS:.0f} s for the second stratus put): {verdict}")
        return 0 if second_put < TARGET_SECONDS else 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
