"""CLI start-up: wall time of ``stratus --help`` and ``stratus stat`` against a running server.

Each command runs ``RUNS`` times as a fresh process (as a person or a script runs it); the
median is checked against the 150 ms target. For scale the same is timed for a bare interpreter
(``python -c pass``) and for importing typer alone, the floor no CLI built on it can go below,
and ``python -X importtime -c 'import cli.main'`` gives the import time of the entry module and
the heavy modules it pulls in (there should be none of them).

Run alone with ``python -m bench.startup`` (starts its own server), or as the ``startup`` group
of ``python -m bench``.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.servers import ROOT, BenchServer

RUNS = 10
TARGET_MS = 150.0
# Imported by a command that needs them, never by the entry module.
HEAVY = ("grpc", "google.protobuf", "rich", "zstandard", "cryptography", "blake3", "pyfastcdc", "cas.pipeline")


def stratus_command() -> list[str]:
    """The installed ``stratus`` script next to this interpreter, else ``python -m cli.main``."""
    script = Path(sys.executable).parent / "stratus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def wall_ms(args: list[str], env: dict[str, str], runs: int = RUNS) -> dict:
    """Run ``args`` ``runs`` times (after one warm-up run); median, min and max wall time in ms."""
    times = []
    for n in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if n:  # the first run warms the page cache
            times.append(elapsed)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "runs": runs}


def import_profile(env: dict[str, str]) -> dict:
    """``-X importtime`` of ``import cli.main``: total, and which heavy modules it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import cli.main"], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    rows = [m.groups() for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", done.stderr)]
    total = next((int(cum) for _, cum, _, name in rows if name == "cli.main"), None)
    names = {name for *_, name in rows}
    heavy = sorted(h for h in HEAVY if h in names)
    slowest = sorted(((int(own), name) for own, _, _, name in rows), reverse=True)[:8]
    return {"cli_main_ms": total / 1000 if total else None, "heavy_imported": heavy,
            "slowest_self_ms": [[name, own / 1000] for own, name in slowest]}


def run(ws: object = None) -> dict:
    """Start a server (mTLS if the workspace has a PKI), put one file, time the commands."""
    with tempfile.TemporaryDirectory(prefix="stratus-startup-") as tmp:
        folder = Path(tmp)
        tls = ws.pki() if ws is not None else None  # type: ignore[attr-defined]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(folder / "config"),
               "XDG_CACHE_HOME": str(folder / "cache"), "HOME": str(folder)}
        env.pop("STRATUS_SERVER", None)
        with BenchServer(folder / "server", tls) as server:
            cli = [*stratus_command(), *server.client_args()]
            sample = folder / "sample.txt"
            sample.write_bytes(os.urandom(4096))
            subprocess.run([*cli, "--quiet", "put", str(sample), "startup/sample.txt"], env=env, cwd=ROOT,
                           check=True, capture_output=True)
            result = {
                "python_pass": wall_ms([sys.executable, "-c", "pass"], env),
                "import_typer": wall_ms([sys.executable, "-c", "import typer"], env),
                "help": wall_ms([*stratus_command(), "--help"], env),
                "stat": wall_ms([*cli, "stat", "startup/sample.txt"], env),
                "stat_json": wall_ms([*cli, "--json", "stat", "startup/sample.txt"], env),
                "imports": import_profile(env),
                "target_ms": TARGET_MS,
            }
    return result


def summary_lines(r: dict) -> list[str]:
    """The figures as text lines, targets marked met or missed."""
    lines = []
    for key, label in (("python_pass", "python -c pass (floor)"), ("import_typer", "python -c 'import typer'"),
                       ("help", "stratus --help"), ("stat", "stratus stat"), ("stat_json", "stratus --json stat")):
        m = r[key]
        mark = ""
        if key in ("help", "stat"):
            mark = "  target met" if m["median_ms"] < r["target_ms"] else "  target MISSED"
        lines.append(f"{label:28} median {m['median_ms']:6.1f} ms  (min {m['min_ms']:.1f}, max {m['max_ms']:.1f},"
                     f" {m['runs']} runs){mark}")
    imp = r["imports"]
    lines.append(f"import cli.main: {imp['cli_main_ms']} ms (-X importtime); heavy modules imported: "
                 f"{', '.join(imp['heavy_imported']) or 'none'}")
    lines.append("slowest own import times: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in imp["slowest_self_ms"]))
    return lines


def main() -> int:
    for line in summary_lines(run()):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
