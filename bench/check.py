"""Verifying a store: ``stratus admin check`` (every record read, its checksum verified) and
``--read-data`` (decode and BLAKE3 every chunk) next to ``restic check`` and ``restic check
--read-data`` on a repository of the same data.

The data is the ``mixed`` file (1 GiB; half incompressible, half text-like), uploaded once to an
mTLS server on the pack layout (the default) whose access file gives the bench identity the admin
role, and backed up once by restic (format 2, compression auto). Every check runs as a process,
as a user runs it; the two tools take turns, ``ROUNDS`` times, and the fastest run of each counts,
so drift in the machine's load hits both alike. Both read a warm page cache (the data was just
written): the figures are the cost of verifying, not of the disk.

Reported per check: seconds, MB/s of logical data (the file's size) and of stored bytes (pack
files; restic's repository), and our MB/s over restic's.

Run alone with ``python -m bench.check``, or as the ``check`` group of ``python -m bench``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.datasets import Sizes, Workspace
from bench.servers import BenchServer, disk_usage, settle
from bench.startup import stratus_command

ROUNDS = 2
REMOTE = "bench/mixed.bin"
ACCESS = '[identities.bench]\nadmin = true\n'  # the client certificate of the bench PKI is "bench"


def _timed(args: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    """Run a process to its end (it must succeed): (seconds, stdout)."""
    settle()
    t0 = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} exited {done.returncode}: {done.stderr[-400:]}")
    return seconds, done.stdout


def _rates(seconds: float, logical: int, stored: int) -> dict[str, float]:
    return {"seconds": seconds, "logical_mb_per_s": logical / seconds / 1e6, "stored_mb_per_s": stored / seconds / 1e6}


class _Ours:
    """A server holding the file, and ``stratus admin check`` against it."""

    def __init__(self, root: Path, ws: Workspace, source: Path) -> None:
        access = root / "access.toml"
        root.mkdir(parents=True, exist_ok=True)
        access.write_text(ACCESS)
        self.server = BenchServer(root / "server", ws.pki(), env={"STRATUS_ACCESS_FILE": str(access)}).start()
        client, _ = self.server.client()
        try:
            client.put_file(source, REMOTE)
        finally:
            client.close()
        self.stored = self.server.stored()["chunks"]
        self.env = {**os.environ, "STRATUS_CACHE_DIR": str(root / "cache"),
                    "STRATUS_CLIENT_CONFIG": str(root / "no-config.toml")}

    def check(self, read_data: bool) -> tuple[float, dict]:
        cmd = [*stratus_command(), *self.server.client_args(), "--json", "admin", "check"]
        seconds, out = _timed(cmd + (["--read-data"] if read_data else []), self.env)
        report = json.loads(out)
        if report["damaged"] or report["missing"] or report["awaiting_repair"]:
            raise RuntimeError(f"the store is not clean: {report}")
        return seconds, report

    def close(self) -> None:
        self.server.stop()


class _Restic:
    """A restic repository holding the file, and ``restic check`` on it."""

    def __init__(self, root: Path, source: Path) -> None:
        self.repo = root / "repo"
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(self.repo),
                    "RESTIC_CACHE_DIR": str(root / "cache"), "RESTIC_COMPRESSION": "auto"}
        _timed(["restic", "init", "--repository-version", "2"], self.env)
        _timed(["restic", "backup", "--host", "bench", source.name], self.env, source.parent)
        self.stored = disk_usage(self.repo / "data")[0]
        self.version = _timed(["restic", "version"], self.env)[1].split()[1]

    def check(self, read_data: bool) -> tuple[float, dict]:
        seconds, _ = _timed(["restic", "check", *(["--read-data"] if read_data else [])], self.env)
        return seconds, {}


def run(ws: Workspace) -> dict:
    """The group's figures: per tool and check kind, the fastest of ``ROUNDS`` runs."""
    source = ws.mixed()
    logical = source.stat().st_size
    root = ws.dir("check")
    ws.log("check: uploading the mixed file")
    ours = _Ours(root / "ours", ws, source)
    tools: dict[str, _Ours | _Restic] = {"stratusvault": ours}
    out: dict = {"logical_bytes": logical, "notes": []}
    try:
        if shutil.which("restic"):
            ws.log("check: restic backup of the same file")
            tools["restic"] = _Restic(root / "restic", source)
        else:
            out["notes"].append("restic is not installed: the check group has no peer")
        best: dict[str, dict[str, float]] = {}
        for n in range(ROUNDS):
            for kind, read_data in (("check", False), ("check_read_data", True)):
                for name, tool in tools.items():
                    ws.log(f"check round {n + 1}: {name} {kind}")
                    seconds, report = tool.check(read_data)
                    key = f"{name}_{kind}"
                    if key not in best or seconds < best[key]["seconds"]:
                        best[key] = {**_rates(seconds, logical, tool.stored), **report}
        out.update(best)
        out["stored_bytes"] = {name: tool.stored for name, tool in tools.items()}
        if "restic" in tools:
            out["restic_version"] = tools["restic"].version  # type: ignore[union-attr]
            for kind in ("check", "check_read_data"):
                out[f"{kind}_vs_restic"] = (best[f"restic_{kind}"]["seconds"] /
                                            best[f"stratusvault_{kind}"]["seconds"])
    finally:
        ours.close()
        shutil.rmtree(root, ignore_errors=True)
    return out


def _print(r: dict) -> None:
    print(f"{r['logical_bytes'] / 1e6:.0f} MB logical; stored: " +
          ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in r["stored_bytes"].items()))
    for key, label in (("check", "check"), ("check_read_data", "check --read-data")):
        for name in r["stored_bytes"]:
            f = r[f"{name}_{key}"]
            print(f"{name} {label}: {f['seconds']:.2f} s, {f['logical_mb_per_s']:.0f} MB/s logical, "
                  f"{f['stored_mb_per_s']:.0f} MB/s stored")
        if f"{key}_vs_restic" in r:
            print(f"  {label}: stratus/restic speed {r[f'{key}_vs_restic']:.2f}x")


if __name__ == "__main__":
    quick = "--quick" in sys.argv[1:]
    tmp = Path(tempfile.mkdtemp(prefix="stratus-check-"))
    try:
        _print(run(Workspace(tmp, Sizes.quick() if quick else Sizes.full())))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
