"""``python -m bench``: the StratusVault benchmark suite, one command.

Builds its datasets in a temporary folder, starts its own servers (embedded Valkey, mTLS; a
plaintext one for the TLS comparison) as child processes, runs the groups and writes
``latest.md`` (tables, targets met or missed), ``latest.json`` (every figure) and PNG charts to
``--out`` (default ``bench/results/``, git-ignored).

Groups: transfer (throughput, re-upload, deltas, TLS cost), latency (Stat/ListFiles under
concurrency, 1000 Watch streams), memory (peak RSS moving a 4 GiB file), peers (restic, borg,
rsync with and without -z on the same data, every tool timed as a process; the ones not installed
are skipped), history (8 django releases file by file: bytes on disk and time, us vs the
peers), get_over_old (a download over an old copy after 10 scattered 4 KiB edits: bytes vs rsync and
rsync -z, with and without delta downloads), gc (30 daily versions of a file, 23 forgotten: bytes freed,
time, upload throughput during the collection; restic forget --prune on the same history),
gc_stress (writers racing collections; ``--cycles N``), stages (CPU seconds per GiB by stage, client and
server, sampled with py-spy), startup (wall time of ``stratus --help``
and ``stratus stat``, fresh process per run, against the 150 ms target), flood (another identity's
Stat p99 while one identity floods the server), forget (``stratus forget`` vs ``restic forget``, reads
before and after a forget), check (``stratus admin check`` and ``--read-data`` vs ``restic check`` on
the 1 GiB mixed file), sync (the sync daemon: propagation latency, a 4 KiB edit of a big file, idle CPU
and RSS, first and unchanged sync of a tree). ``--quick`` shrinks everything to
a smoke test (64 MiB, 1,000 files, under 2 minutes); the full run takes about 7 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench import check, flood, forget, gc, latency, memory, peers, report, servers, stages, startup, sync, transfer
from bench.datasets import Sizes, Workspace
from bench.servers import ROOT, CpuProbe

GROUPS = {"transfer": transfer.run, "latency": latency.run, "memory": memory.run, "peers": peers.run,
          "history": peers.run_history, "get_over_old": peers.run_get_over_old, "startup": startup.run,
          "flood": flood.run, "forget": forget.run, "check": check.run, "gc": gc.run, "gc_stress": gc.run_stress,
          "stages": stages.run, "sync": sync.run}


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (64 MiB, 1,000 files), ~2 minutes")
    parser.add_argument("--only", action="append", choices=sorted(GROUPS), metavar="NAME",
                        help=f"run only this group (repeatable): {', '.join(GROUPS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where results go")
    parser.add_argument("--cycles", type=int, metavar="N", help="collections of the gc_stress group")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (datasets, server data)")
    args = parser.parse_args(argv)

    sizes = Sizes.quick() if args.quick else Sizes.full()
    if args.cycles:
        sizes = dataclasses.replace(sizes, gc_cycles=args.cycles)
    names = [n for n in GROUPS if not args.only or n in args.only]
    started = time.perf_counter()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results: dict = {
        "meta": {"started": dt.datetime.now().isoformat(timespec="seconds"), "mode": "quick" if args.quick else "full",
                 "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "python": platform.python_version(),
                 "commit": _commit(), "command": command.strip(),
                 "sizes": sizes.__dict__, "group_seconds": {}, "other_cpus": {}},
        "notes": [], "groups": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="stratus-bench-"))
    ws = Workspace(tmp, sizes, log=_log)
    _log(f"workspace {tmp}; groups: {', '.join(names)}")
    try:
        for name in names:
            t0 = time.perf_counter()
            probe = CpuProbe()
            servers.LOG_DIR[:] = [tmp / "logs" / name]
            _log(f"== {name}")
            try:
                results["groups"][name] = GROUPS[name](ws)
            except Exception as exc:  # noqa: BLE001 - one failed group must not lose the others
                results["groups"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                           "server_errors": servers.server_errors(tmp / "logs" / name)}
                results["notes"].append(f"group {name} failed: {exc}")
                traceback.print_exc()
                for text in results["groups"][name]["server_errors"]:
                    print(text, file=sys.stderr)
            results["meta"]["group_seconds"][name] = time.perf_counter() - t0
            cpu = probe.stop()
            # CPUs that processes outside this run used meanwhile: 2 cores shared, so > 0.3 skews timings
            results["meta"]["other_cpus"][name] = cpu["others_cpu"] / cpu["wall"]
            results["meta"]["seconds"] = time.perf_counter() - started
            results["notes"] = list(dict.fromkeys(results["notes"] + ws.notes +
                                                  results["groups"][name].get("notes", [])))
            report.write(results, args.out)  # after each group, so an interrupted run keeps what it measured
    finally:
        if args.keep:
            _log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"done in {time.perf_counter() - started:.0f} s: {args.out / 'latest.md'}")
    for target in results.get("targets", []):
        status = {True: "met", False: "MISSED", None: "n/a"}[target["met"]]
        print(f"{status:>7}  {target['target']}: {target['measured']} (goal {target['goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
