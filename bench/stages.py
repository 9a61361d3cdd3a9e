"""Where the CPU goes: CPU seconds per GiB by stage, client and server, upload and restore.

A fresh upload and a restore of a mixed file (256 MiB in a full run, the ``--quick`` size
otherwise; ``STRATUS_BENCH_STAGES_MIB`` overrides), three rounds (``STRATUS_BENCH_STAGES_ROUNDS``),
each on a new server (mTLS, embedded Valkey), go through the CLI as processes, each side
sampled by ``py-spy`` at :data:`RATE` Hz.

py-spy cannot tell idle threads here (it samples every thread at every tick), and on a loaded
machine a runnable thread waiting for a core is sampled too, so samples are not CPU seconds.
They only give the split: samples whose innermost frame is a known wait (:data:`IDLE`: a pool
worker waiting for work, a lock, epoll, a socket read, a barrier) are dropped; each remaining
sample goes to the first stage of :data:`CLIENT_STAGES` / :data:`SERVER_STAGES` that matches one
of its frames ("function (file:line)" plus the text of that line, so a native call made from a
Python line is named by that line). The CPU seconds come from the kernel: every thread's
utime+stime (``/proc/PID/task``, polled); threads that Python did not start (gRPC core's own
threads: TLS, HTTP/2, timers) keep their own rows, named by their thread name, and the Python
threads' CPU is split over the stages in proportion to their samples. The embedded Valkey is its
own process and its own row. The tables show the median of the rounds, figure by figure. py-spy
pauses the sampled process briefly at every tick, which costs it a few percent.

``python -m bench --only stages`` prints the tables and keeps them in the results; without
``py-spy`` installed (``pip install py-spy``) the group says so and measures nothing.
"""

from __future__ import annotations

import linecache
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

from bench.datasets import MIB, Workspace, write_mixed
from bench.servers import ROOT, BenchServer, settle

RATE = 200
GIB = 1024 * MIB
_CLI = "import sys; from cli.main import app; sys.argv[0] = 'stratus'; app()"

# (stage, pattern): a sample belongs to the first stage one of whose patterns matches one of its
# frames ("function (file:line)" followed by the text of that line). Specific before general.
CLIENT_STAGES: list[tuple[str, str]] = [
    ("compress", r"^encode \(cas/codec\.py|_compressor \("),
    ("decompress+verify", r"^(\w+\.)?(decode|decode_verified|decompress_checked|_decoded|decode_chunk) \("),
    ("hash", r"^digest \(cas/digest\.py|hasher\.update\("),
    ("chunk", r"cas/chunker\.py|pyfastcdc"),
    ("file write+fsync", r"cli/localfile\.py|write_all\(|os\.fsync|os\.pwrite|os\.write"),
    ("read local copy", r"index_local_file|read_exact"),
    ("gRPC serialize/send/receive", r"grpc/|google/protobuf|SerializeToString|FromString|_pb2"),
    ("startup (imports)", r"_find_and_load|^<module> \(cli/main\.py"),
    ("other Python", r""),
]
SERVER_STAGES: list[tuple[str, str]] = [
    ("decode+verify", r"^(\w+\.)?(decode|decode_verified|decompress_checked|verify|_verify) \("),
    ("pack write+fsync", r"^(\w+\.)?(stage|_stage|publish|flush|append_many|_sync|syncfs) \(|fsync"),
    ("pack read", r"^(\w+\.)?(get_frame|read_frames|_indexed|read) \((cas|service)/"),
    ("metadata (Redis client)", r"service/metadata/|redis/"),
    ("gRPC receive/parse/send", r"grpc/|google/protobuf|FromString|SerializeToString|_pb2|_arriving|_checked_batch"
                                r"|_chunk_batches|_send_all"),
    ("other Python (event loop, handlers)", r""),
]
# Innermost frames of a thread that waits (a Python frame blocked in native code: a queue, a
# lock, epoll, a socket read, a durability barrier, whose CPU is the kernel's, not the stage's).
IDLE = re.compile(r"work_queue\.get\(block=True\)|waiter\.acquire\(|_selector\.poll\(|next_call_event\(\)|"
                  r"call\.next_event\(\)|^Thread\.run \(threading\.py|poller\.poll\(|time\.sleep\(|"
                  r"_wait_for_tstate_lock|\.recv_into\(|\.recv\(|fdatasync\(|fsync\(")
VALKEY = "metadata (Valkey process)"


def have_pyspy() -> bool:
    """Whether py-spy can be run (it is an optional tool: ``pip install py-spy``)."""
    return _pyspy() is not None


def _pyspy() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _record(pid: int, out: Path) -> subprocess.Popen:
    """Start sampling ``pid`` into ``out`` (raw, collapsed stacks); stop with SIGINT or its exit."""
    cmd = [_pyspy() or "py-spy", "record", "--pid", str(pid), "-r", str(RATE), "-f", "raw",
           "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _frame_text(frame: str) -> str:
    """``function (file:line)`` plus the source of that line, for matching."""
    match = re.search(r"\(([^():]+):(\d+)\)$", frame)
    if not match:
        return frame
    name, line = match.group(1), int(match.group(2))
    for base in (ROOT, *(Path(p) for p in sys.path if p)):
        path = base / name
        if path.is_file():
            return f"{frame} {linecache.getline(str(path), line).strip()}"
    return frame


def fold(raw: Path, rules: list[tuple[str, str]], leaves: dict[str, Counter[str]] | None = None) -> Counter[str]:
    """Samples of a py-spy raw file per stage, waits dropped (see the module docstring)."""
    compiled = [(stage, re.compile(pattern)) for stage, pattern in rules]
    texts: dict[str, str] = {}
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [texts.setdefault(f, _frame_text(f)) for f in stack.split(";")]
        if not stack.strip() or IDLE.search(frames[-1]):
            continue
        leaf_first = frames[::-1]
        stage = next(s for s, rx in compiled if any(rx.search(f) for f in leaf_first))
        counts[stage] += int(n)
        if leaves is not None:
            leaves.setdefault(stage, Counter())[frames[-1][:160]] += int(n)
    return counts


def _stop(recorder: subprocess.Popen) -> None:
    if recorder.poll() is None:
        recorder.send_signal(signal.SIGINT)
    try:
        recorder.wait(60)
    except subprocess.TimeoutExpired:
        recorder.kill()
        recorder.wait()


class ThreadCpu:
    """utime+stime of every thread of some processes, by thread, from ``/proc/PID/task``.

    A thread's last reading is kept after it exits, so :meth:`poll` often enough (the client's
    threads live as long as the upload); :meth:`seconds` gives CPU seconds since construction,
    per process and thread name.
    """

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start: dict[tuple[str, int], int] = {}
        self.last: dict[tuple[str, int], tuple[str, int]] = {}
        self.poll()
        self.start = {key: ticks for key, (_, ticks) in self.last.items()}

    def poll(self) -> None:
        """Read every thread of every process (those that are gone are skipped)."""
        for who, pid in self.pids.items():
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/stat") as f:
                        text = f.read()
                except OSError:
                    continue
                name = text[text.index("(") + 1:text.rindex(")")]
                fields = text[text.rindex(")") + 2:].split()
                self.last[(who, int(tid))] = (name, int(fields[11]) + int(fields[12]))

    def seconds(self, who: str) -> dict[str, float]:
        """CPU seconds of ``who``'s threads since construction, summed per thread name."""
        out: Counter[str] = Counter()
        for (owner, tid), (name, ticks) in self.last.items():
            if owner == who:
                out[name] += (ticks - self.start.get((owner, tid), 0)) / self.TICK
        return dict(out)


def _stage_seconds(counts: Counter[str], rules: list[tuple[str, str]], threads: dict[str, float],
                   python_name: str) -> dict[str, float]:
    """The Python threads' CPU split over the stages by samples, then every other thread's CPU."""
    python_cpu = threads.get(python_name, 0.0)
    total = sum(counts.values()) or 1
    seconds = {stage: python_cpu * counts.get(stage, 0) / total for stage, _ in rules}
    for name, cpu in sorted(threads.items()):
        if name != python_name and cpu >= 0.005:
            seconds[f"native thread {name!r}"] = cpu
    return seconds


def profile_cli(server: BenchServer, work: Path, name: str, args: list[str]) -> dict:
    """Run ``stratus ARGS`` as a process with client and server sampled; CPU seconds per stage."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUS_SERVER": server.address,
           "STRATUS_TLS_DIR": str(server.tls_dir), "STRATUS_CACHE_DIR": str(work / "cli-cache"),
           "STRATUS_CLIENT_CONFIG": str(work / "no-config.toml")}
    server_proc = psutil.Process(server.pid)
    valkey = next(iter(server_proc.children()), None)
    server_raw, client_raw = work / f"{name}-server.txt", work / f"{name}-client.txt"
    server_rec = _record(server.pid, server_raw)
    time.sleep(1.0)  # py-spy attaches
    started = time.perf_counter()
    client = subprocess.Popen([sys.executable, "-c", _CLI, "--json", *args], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids = {"client": client.pid, "server": server.pid} | ({"valkey": valkey.pid} if valkey else {})
    cpu = ThreadCpu(pids)
    client_rec = _record(client.pid, client_raw)
    while client.poll() is None:
        cpu.poll()
        time.sleep(0.05)
    wall = time.perf_counter() - started
    cpu.poll()
    _stop(server_rec)
    _stop(client_rec)
    if client.returncode != 0:
        raise RuntimeError(f"stratus {args[0]} failed: {client.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
    python_name = server_proc.name()[:15]
    client_threads, server_threads = cpu.seconds("client"), cpu.seconds("server")
    server_stages = _stage_seconds(fold(server_raw, SERVER_STAGES), SERVER_STAGES, server_threads, python_name)
    server_stages[VALKEY] = sum(cpu.seconds("valkey").values())
    client_stages = _stage_seconds(fold(client_raw, CLIENT_STAGES), CLIENT_STAGES, client_threads, python_name)
    return {"wall": wall, "client_cpu": sum(client_threads.values()), "server_cpu": sum(server_threads.values()),
            "client": client_stages, "server": server_stages}


def table(phase: str, result: dict, size: int) -> str:
    """The stage table of one phase, in CPU seconds per GiB."""
    per_gib = GIB / size
    lines = [f"{phase}: {size / MIB:.0f} MiB in {result['wall']:.2f} s ({size / MIB / result['wall']:.1f} MiB/s); "
             "CPU s per GiB", f"  {'process':<7} {'stage':<52} {'CPU s/GiB':>9}"]
    for side in ("client", "server"):
        for stage, seconds in result[side].items():
            lines.append(f"  {side:<7} {stage:<52} {seconds * per_gib:9.2f}")
        total = sum(result[side].values())
        lines.append(f"  {side:<7} {'TOTAL':<52} {total * per_gib:9.2f}")
    return "\n".join(lines)


def _round(ws: Workspace, source: Path, number: int) -> tuple[dict, dict]:
    """One fresh upload and one restore, each on a new server (so the upload is a fresh one)."""
    work = ws.dir(f"stages-{number}")
    server = BenchServer(work / "server", ws.pki()).start()
    try:
        settle()
        upload = profile_cli(server, work, "upload", ["put", str(source), "bench/mixed"])
        settle()
        restore = profile_cli(server, work, "restore", ["get", "bench/mixed", str(work / "restored")])
    finally:
        server.stop()
        shutil.rmtree(work / "restored", ignore_errors=True)
    return upload, restore


def median_result(results: list[dict]) -> dict:
    """Per figure and per stage, the median over rounds (a shared machine makes single runs noisy)."""
    merged: dict = {}
    for key in results[0]:
        if isinstance(results[0][key], dict):
            merged[key] = {stage: statistics.median(r[key].get(stage, 0.0) for r in results)
                           for stage in dict.fromkeys(s for r in results for s in r[key])}
        else:
            merged[key] = statistics.median(r[key] for r in results)
    return merged


def run(ws: Workspace) -> dict:
    """Profile fresh uploads and restores (``STRATUS_BENCH_STAGES_ROUNDS``, default 3); print and
    return the tables of the medians (seconds per stage), and every round."""
    if not have_pyspy():
        return {"notes": ["stages: py-spy is not installed (pip install py-spy); nothing measured"]}
    size = int(os.environ.get("STRATUS_BENCH_STAGES_MIB", "0")) * MIB or min(ws.sizes.mixed, 256 * MIB)
    rounds = int(os.environ.get("STRATUS_BENCH_STAGES_ROUNDS", "3"))
    source = write_mixed(ws.dir("stages-data") / "mixed", size)
    measured = [_round(ws, source, n) for n in range(rounds)]
    upload, restore = median_result([u for u, _ in measured]), median_result([r for _, r in measured])
    print(f"medians of {rounds} rounds", flush=True)
    for phase, result in (("fresh upload", upload), ("restore", restore)):
        print(table(phase, result, size), flush=True)
    return {"size": size, "rounds": rounds, "upload": upload, "restore": restore,
            "every_round": [{"upload": u, "restore": r} for u, r in measured]}


if __name__ == "__main__":
    import tempfile

    from bench.datasets import Sizes

    tmp = Path(tempfile.mkdtemp(prefix="stratus-stages-"))
    try:
        run(Workspace(tmp, Sizes.full()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
