"""CLI start-up: wall time of ``stratus --help`` and ``stratus stat`` against a running server.

Each command runs ``RUNS`` times as a fresh process (as a person or a script runs it); the
median wall time is checked against the 150 ms target. The CPU time of the same runs is shown
beside it: on a busy machine wall time grows with the load, CPU time barely does. For scale the
same is timed for a bare interpreter (``python -c pass``), for importing typer, and for a typer
app of one command with one argument (typer coerces every parameter through pydantic, which it
imports): the floor no CLI built on typer can go below. And ``python -X importtime -c 'import cli.main'`` gives the
import time of the entry module and the heavy modules it pulls in (there should be none).

Run alone with ``python -m bench.startup`` (starts its own server), or as the ``startup`` group
of ``python -m bench``. ``python -m bench.startup --baseline DIR`` also times ``python -m cli.main``
from another checkout (``git archive REV | tar -x -C DIR``), interleaved run by run with this one.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
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
# The smallest typer app: one option on the callback, one command with one argument.
TYPER_APP = """
import typer
app = typer.Typer(rich_markup_mode="rich")
@app.callback()
def main(json_output: bool = typer.Option(False, "--json")) -> None:
    pass
@app.command()
def stat(remote: str) -> None:
    print(remote)
app()
"""
HEAVY = ("grpc", "google.protobuf", "rich", "zstandard", "cryptography", "blake3", "pyfastcdc", "cas.pipeline")


def stratus_command() -> list[str]:
    """The installed ``stratus`` script next to this interpreter, else ``python -m cli.main``."""
    script = Path(sys.executable).parent / "stratus"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_once(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, float]:
    """Wall and CPU milliseconds of one run of ``args``."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall, cpu = (time.perf_counter() - t0) * 1000, (_children_cpu() - cpu0) * 1000
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return wall, cpu


def figures(samples: list[tuple[float, float]]) -> dict:
    """Median, min and max wall time and median CPU time of (wall, cpu) samples, in ms."""
    walls = [w for w, _ in samples]
    return {"median_ms": statistics.median(walls), "min_ms": min(walls), "max_ms": max(walls),
            "cpu_median_ms": statistics.median(c for _, c in samples), "runs": len(samples)}


def wall_ms(args: list[str], env: dict[str, str], runs: int = RUNS) -> dict:
    """Run ``args`` ``runs`` times (after one warm-up run that fills the page cache) and sum them up."""
    timed_once(args, env)
    return figures([timed_once(args, env) for _ in range(runs)])


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


def run(ws: object = None, baseline: Path | None = None) -> dict:
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
                "typer_app": wall_ms([sys.executable, "-c", TYPER_APP, "stat", "x"], env),
                "help": wall_ms([*stratus_command(), "--help"], env),
                "stat": wall_ms([*cli, "stat", "startup/sample.txt"], env),
                "stat_json": wall_ms([*cli, "--json", "stat", "startup/sample.txt"], env),
                "imports": import_profile(env),
                "target_ms": TARGET_MS,
                "load_average": os.getloadavg()[0],
            }
            if baseline is not None:
                result["baseline"] = compare(baseline, server.client_args(), env)
    return result


def compare(baseline: Path, server_args: list[str], env: dict[str, str], runs: int = RUNS) -> dict:
    """``python -m cli.main`` from ``baseline`` and from this tree, interleaved run by run."""
    out: dict = {"root": str(baseline)}
    for key, args in (("help", ["--help"]), ("stat", [*server_args, "stat", "startup/sample.txt"])):
        pairs: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
        for n in range(runs + 1):
            for side, root in (("before", baseline), ("after", ROOT)):
                sample = timed_once([sys.executable, "-m", "cli.main", *args], {**env, "PYTHONPATH": str(root)}, root)
                if n:
                    pairs[side].append(sample)
        out[key] = {side: figures(samples) for side, samples in pairs.items()}
    return out


def summary_lines(r: dict) -> list[str]:
    """The figures as text lines, targets marked met or missed."""
    lines = []
    for key, label in (("python_pass", "python -c pass (floor)"), ("import_typer", "python -c 'import typer'"),
                       ("typer_app", "one-command typer app"),
                       ("help", "stratus --help"), ("stat", "stratus stat"), ("stat_json", "stratus --json stat")):
        m = r[key]
        mark = ""
        if key in ("help", "stat"):
            mark = "  target met" if m["median_ms"] < r["target_ms"] else "  target MISSED"
        lines.append(f"{label:28} median {m['median_ms']:6.1f} ms wall, {m['cpu_median_ms']:6.1f} ms CPU"
                     f"  (wall min {m['min_ms']:.1f}, max {m['max_ms']:.1f}, {m['runs']} runs){mark}")
    # CPU time bounds the wall time of a single-threaded run from below, however idle the machine.
    floor = r["typer_app"]["cpu_median_ms"]
    if floor >= r["target_ms"]:
        lines.append(f"a one-command typer app alone needs {floor:.1f} ms of CPU here, a lower bound of its wall"
                     f" time: no CLI on this typer can meet the {r['target_ms']:g} ms target on this machine")
    imp = r["imports"]
    lines.append(f"import cli.main: {imp['cli_main_ms']} ms (-X importtime); heavy modules imported: "
                 f"{', '.join(imp['heavy_imported']) or 'none'}")
    lines.append("slowest own import times: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in imp["slowest_self_ms"]))
    lines.append(f"load average (1 min) during the run: {r['load_average']:.2f}")
    base = r.get("baseline")
    for key in ("help", "stat") if base else ():
        b, a = base[key]["before"], base[key]["after"]
        lines.append(f"python -m cli.main {key}: before {b['median_ms']:.1f} ms wall / {b['cpu_median_ms']:.1f} ms CPU,"
                     f" after {a['median_ms']:.1f} ms wall / {a['cpu_median_ms']:.1f} ms CPU (baseline {base['root']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of another revision to compare with")
    args = parser.parse_args(argv)
    for line in summary_lines(run(baseline=args.baseline)):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
