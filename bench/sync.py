"""The sync daemon: propagation latency, bytes on the wire for a small edit of a big file, an idle
daemon's CPU and memory, and the time of a first and of an unchanged sync of a tree.

Two ``stratus --json sync --watch`` processes (folders A and B, separate caches) run against one
server (mTLS, embedded Valkey):

* small files: a file written on A, timed until B holds it with the right content (p50/p99);
* a 4 KiB edit in the middle of a large file (1 GiB full, 64 MiB quick): time until B has it, and
  the bytes A sent and B fetched for it (from the daemons' JSON action lines);
* idle: B's daemon watching the tree of ``idle_files`` files, CPU share and RSS over ``IDLE_S``;
* first sync of a tree of ``tree_small`` files (one-shot ``stratus sync`` process, folder C), then
  an unchanged re-sync (process wall time and the engine's own time in-process), next to
  ``rsync -a`` of the same unchanged tree (local, no server) as the peer figure of "nothing to do".
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import psutil

from bench.datasets import MIB, make_tree, write_mixed
from bench.latency import percentiles
from bench.servers import ROOT, BenchServer
from bench.startup import stratus_command

SMALL_SAMPLES = 40
IDLE_S = 20.0
TARGET_P50_S = 1.0
TARGET_IDLE_CPU = 0.01
TARGET_RESYNC_S = 1.0


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
    env.update({"PYTHONPATH": str(ROOT), "STRATUS_CACHE_DIR": str(home / "cache"),
                "STRATUS_CLIENT_CONFIG": str(home / "none.toml"), "HOME": str(home)})
    return env


class _Daemon:
    def __init__(self, server: BenchServer, folder: Path, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        self.log = home / "sync.log"
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([*stratus_command(), *server.client_args(), "--json", "sync", "--watch",
                                          str(folder), "bench/"], env=_env(home), cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def actions(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _wait(check: object, timeout: float = 120.0) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if check():  # type: ignore[operator]
            return time.perf_counter() - start
        time.sleep(0.005)
    raise TimeoutError("the change did not arrive")


def _content(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _small_latency(a: Path, b: Path) -> dict:
    samples = []
    for i in range(SMALL_SAMPLES):
        data = os.urandom(1024) + str(i).encode()
        (a / f"small{i}.txt").write_bytes(data)
        samples.append(_wait(lambda i=i, data=data: _content(b / f"small{i}.txt") == data))
        time.sleep(0.1)
    return percentiles(samples)


def _big_edit(a: Path, b: Path, da: _Daemon, db: _Daemon, size: int) -> dict:
    big = write_mixed(a / "big.bin", size)
    first = _wait(lambda: (b / "big.bin").exists() and (b / "big.bin").stat().st_size == size, 600)
    time.sleep(1.0)
    sent0 = sum(x["bytes_sent"] for x in da.actions())
    fetched0 = sum(x["bytes_fetched"] for x in db.actions())
    downloads0, uploads0 = _downloads(db), _uploads(da)
    edit = os.urandom(4096)
    with open(big, "r+b") as f:
        f.seek(size // 2)
        f.write(edit)
    seconds = _wait(lambda: _slice(b / "big.bin", size // 2) == edit, 600)
    # The content is visible from the rename on; the action line follows once the download is
    # durable and recorded (the directory fsync after a big file can take a while): wait for it.
    _wait(lambda: _downloads(db) > downloads0, 120)
    _wait(lambda: _uploads(da) > uploads0, 120)
    return {"size": size, "first_copy_s": first, "edit_s": seconds,
            "edit_bytes_sent": sum(x["bytes_sent"] for x in da.actions()) - sent0,
            "edit_bytes_fetched": sum(x["bytes_fetched"] for x in db.actions()) - fetched0}


def _downloads(daemon: _Daemon) -> int:
    return sum(1 for x in daemon.actions() if x["action"] == "download" and x["path"] == "big.bin" and x["ok"])


def _uploads(daemon: _Daemon) -> int:
    return sum(1 for x in daemon.actions() if x["action"] in ("upload", "record") and x["path"] == "big.bin"
               and x["ok"])


def _slice(path: Path, offset: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(4096)
    except OSError:
        return None


def _idle(daemon: _Daemon, files: int) -> dict:
    proc = psutil.Process(daemon.proc.pid)
    lines = -1
    while lines != (lines := len(daemon.log.read_text().splitlines())):  # quiet: no action for 3 s
        time.sleep(3.0)
    t0 = proc.cpu_times()
    w0 = time.perf_counter()
    time.sleep(IDLE_S)
    t1 = proc.cpu_times()
    cpu = (t1.user + t1.system - t0.user - t0.system) / (time.perf_counter() - w0)
    return {"files": files, "seconds": IDLE_S, "cpu_share": cpu, "rss_mib": proc.memory_info().rss / MIB}


def _tree_sync(server: BenchServer, root: Path, files: int) -> dict:
    tree = make_tree(root / "C", files, [])
    home = root / "home-c"
    cmd = [*stratus_command(), *server.client_args(), "--json", "sync", str(tree.root), "tree/"]
    t0 = time.perf_counter()
    first = subprocess.run(cmd, env=_env(home), cwd=ROOT, capture_output=True, text=True)
    first_s = time.perf_counter() - t0
    if first.returncode:
        raise RuntimeError(first.stdout + first.stderr)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=_env(home), cwd=ROOT, capture_output=True, check=True)
        runs.append(time.perf_counter() - t0)
    engine = _engine_resync(server, tree.root, home)
    copy = root / "rsync-copy"
    subprocess.run(["rsync", "-a", f"{tree.root}/", f"{copy}/"], check=True)
    t0 = time.perf_counter()
    subprocess.run(["rsync", "-a", f"{tree.root}/", f"{copy}/"], check=True)
    rsync_s = time.perf_counter() - t0
    return {"files": files, "first_s": first_s, "resync_process_s": statistics.median(runs),
            "resync_engine_s": engine, "rsync_noop_s": rsync_s}


def _engine_resync(server: BenchServer, folder: Path, home: Path) -> float:
    """The engine's own time for an unchanged re-sync (no process start, no imports)."""
    code = ("import sys, time; from cli.library import Client; from cli.sync import SyncOptions\n"
            "c = Client(sys.argv[1], tls_dir=sys.argv[3] or None)\n"
            "e = c.sync_engine(sys.argv[2], 'tree/')\n"
            "t = time.perf_counter(); e.run_once(); print(time.perf_counter() - t); e.close(); c.close()\n")
    tls = str(server.tls_dir) if server.tls_dir is not None else ""
    env = _env(home)
    if not tls:
        env["STRATUS_INSECURE"] = "1"
    out = subprocess.run([*_python(), "-c", code, server.address, str(folder), tls], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _python() -> list[str]:
    import sys

    return [sys.executable]


def run(ws: object) -> dict:
    """Run the sync benchmark in the workspace's temp folder."""
    quick = ws.sizes.mixed < 1024 * MIB  # type: ignore[attr-defined]
    root = ws.dir("sync")  # type: ignore[attr-defined]
    big = 64 * MIB if quick else 1024 * MIB
    files = ws.sizes.tree_small  # type: ignore[attr-defined]
    with BenchServer(root / "server", ws.pki()) as server:  # type: ignore[attr-defined]
        da = _Daemon(server, root / "A", root / "home-a")
        db = _Daemon(server, root / "B", root / "home-b")
        try:
            time.sleep(2.0)
            result = {"small": _small_latency(root / "A", root / "B")}
            result["big"] = _big_edit(root / "A", root / "B", da, db, big)
            (root / "A" / "big.bin").unlink()
            _wait(lambda: not (root / "B" / "big.bin").exists())
            result["tree"] = _tree_sync(server, root, files)
            shutil.copytree(root / "C", root / "A" / "tree", ignore=shutil.ignore_patterns(".stratus-sync"))
            _wait(lambda: (root / "B" / "tree" / "src").exists() and _count(root / "B" / "tree") >= files, 1800)
            result["idle"] = _idle(db, _count(root / "B"))
        finally:
            da.stop()
            db.stop()
    result["targets"] = {"small_p50_s": TARGET_P50_S, "idle_cpu": TARGET_IDLE_CPU, "resync_s": TARGET_RESYNC_S}
    return result


def _count(folder: Path) -> int:
    return sum(len(f) for _, _, f in os.walk(folder))


def summary(result: dict) -> list[str]:
    """Lines for the report."""
    s, b, t, i = result["small"], result["big"], result["tree"], result["idle"]
    return [
        f"small files A->B: p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms ({s['count']} files)",
        f"4 KiB edit in a {b['size'] // MIB} MiB file: {b['edit_s']:.2f} s, sent {b['edit_bytes_sent']} B, "
        f"fetched {b['edit_bytes_fetched']} B (first copy {b['first_copy_s']:.1f} s)",
        f"first sync of {t['files']} files: {t['first_s']:.1f} s; unchanged re-sync: {t['resync_process_s']:.2f} s "
        f"(process), {t['resync_engine_s']:.2f} s (engine); rsync -a no-op {t['rsync_noop_s']:.2f} s "
        f"(ratio {t['resync_process_s'] / max(t['rsync_noop_s'], 1e-9):.1f}x)",
        f"idle daemon watching {i['files']} files: CPU {i['cpu_share'] * 100:.2f} %, RSS {i['rss_mib']:.0f} MiB",
    ]
