"""How long ``stratus admin migrate`` takes per GiB, against ``cp -a`` of the same chunk files.

Usage: ``python -m bench.migrate [--mib 512]``

Starts a real server on a files-layout data dir (``STRATUS_STORE_FORMAT=files``, embedded
Valkey), stores ``--mib`` MiB (half incompressible, half text-like) as 8 MiB files through the
client library, stops it, then times as real processes, in the same run: ``cp -a DATA/chunks``
(just moving the bytes, as a floor) and ``stratus admin migrate`` (reads and verifies every
frame, appends it to packs, one fsync per 64 MiB batch, indexes it in Valkey, removes the files).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli.client import StratusClient
from cli.localserver import LocalServer

ROOT = Path(__file__).resolve().parent.parent
FILE_MIB = 8


def fill(address: str, mib: int) -> None:
    """Store ``mib`` MiB as 8 MiB files: every other one incompressible, the rest repetitive text."""
    with StratusClient.connect(address, insecure=True) as client:
        for n in range(max(1, mib // FILE_MIB)):
            if n % 2:
                data = os.urandom(FILE_MIB << 20)
            else:
                words = b" ".join(b"%d-%s" % (i, os.urandom(4).hex().encode()) for i in range(200_000))
                data = (words * (1 + (FILE_MIB << 20) // len(words)))[: FILE_MIB << 20]
            client.put_bytes(data, f"bench/{n:04d}.bin")


def timed(args: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:5])} ... failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sv-bench-migrate-"))
    try:
        data = work / "data"
        server = LocalServer(data, env={"STRATUS_STORE_FORMAT": "files"}, log=work / "server.log").start()
        try:
            fill(server.address, args.mib)
        finally:
            server.stop()
        stored = sum(p.stat().st_size for p in (data / "chunks").rglob("*") if p.is_file())
        files = sum(1 for p in (data / "chunks").rglob("*") if p.is_file())
        copy_s = timed(["cp", "-a", str(data / "chunks"), str(work / "copy")])
        shutil.rmtree(work / "copy")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUS_CLIENT_CONFIG": str(work / "none.toml")}
        migrate_s = timed([sys.executable, "-m", "cli.main", "--quiet", "admin", "migrate", "--data-dir", str(data)],
                          env)
        gib = stored / (1 << 30)
        print(f"files layout: {files} chunk files, {stored / 2**20:.1f} MiB stored ({args.mib} MiB of content)")
        print(f"{'tool':<26}{'seconds':>9}{'s per GiB':>11}{'MiB/s':>9}")
        for name, seconds in (("cp -a chunks/", copy_s), ("stratus admin migrate", migrate_s)):
            print(f"{name:<26}{seconds:>9.2f}{seconds / gib:>11.1f}{stored / 2**20 / seconds:>9.1f}")
        print(f"migrate / cp: {migrate_s / copy_s:.1f}x")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
