"""Benchmark servers and clients: real ``service.server`` processes on loopback, counted channels.

The processes are started and stopped by :class:`cli.localserver.LocalServer`, the launcher that
``stratus demo`` and the tests use too.

Each benchmark group starts its own servers (fresh data dir, embedded Valkey), so no group sees
chunks that another group uploaded. mTLS is the default, as in production; ``insecure=True``
starts a plaintext server for the TLS-cost comparison.

:class:`bench.wire.WireCounter` counts the serialised size of every request and response message
of a channel (see there).
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import grpc
import psutil

from bench.wire import WireCounter
from cli.client import StratusClient, channel_options, tls_credentials
from cli.localserver import LocalServer

ROOT = Path(__file__).resolve().parent.parent
# Server logs of the run go here (set by the runner), so a failure can be explained after the
# group's folders are gone; by default next to the data dir.
LOG_DIR: list[Path] = []


def settle() -> None:
    """Flush every dirty page before a timing starts. The chunk store's durability barrier is a
    syncfs of the whole filesystem: without this, the first upload after a dataset was copied or
    edited would also pay for writing that copy back, and other tools (which fsync only their
    own files) would not."""
    os.sync()


def server_errors(log_dir: Path, lines: int = 40) -> list[str]:
    """The end of every server log in ``log_dir`` that holds a traceback."""
    found = []
    for log in sorted(log_dir.glob("*.log")):
        text = log.read_text(errors="replace")
        if "Traceback" in text:
            found.append(f"{log.name}:\n" + "\n".join(text.splitlines()[-lines:]))
    return found


def disk_usage(root: Path) -> tuple[int, int, int, int]:
    """(apparent bytes, allocated bytes, files, folders) under ``root``, folders included: what
    ``du -sb`` (apparent, file sizes only) and ``du -sB1`` (allocated blocks of files and folders)
    would say. Files that vanish during the walk are skipped."""
    apparent = allocated = files = folders = 0
    for dirpath, _, filenames in os.walk(root):
        try:
            st = os.lstat(dirpath)
        except FileNotFoundError:
            continue
        folders += 1
        allocated += st.st_blocks * 512
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            files += 1
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated, files, folders


def dir_bytes(path: Path) -> int:
    """Apparent size (sum of st_size) of every regular file under ``path``."""
    return disk_usage(path)[0]


class BenchServer(LocalServer):
    """A ``python -m service.server`` process with its own data dir (mTLS unless ``tls_dir`` is None).

    Its stderr goes to a log file in :data:`LOG_DIR` (by default next to the data dir).
    """

    def __init__(self, data_dir: Path, tls_dir: Path | None = None, env: dict[str, str] | None = None) -> None:
        log_dir = LOG_DIR[0] if LOG_DIR else data_dir.parent
        name = f"{data_dir.parent.name}-{data_dir.name}-{os.getpid()}-{time.monotonic_ns()}.log"
        super().__init__(data_dir, tls_dir=tls_dir, env=env, log=log_dir / name)

    @property
    def insecure(self) -> bool:
        return self.tls_dir is None

    def client(self) -> tuple[StratusClient, WireCounter]:
        """A client on a new channel that counts the bytes it sends and receives."""
        counter = WireCounter()
        if self.tls_dir is None:
            channel = grpc.insecure_channel(self.address, options=channel_options())
        else:
            channel = grpc.secure_channel(self.address, tls_credentials(self.tls_dir), options=channel_options())
        # Like the CLI, keep manifests of what was sent, so re-uploads commit manifest deltas.
        manifests = self.data_dir.parent / f"{self.data_dir.name}-client-manifests"
        return StratusClient(
            grpc.intercept_channel(channel, counter), target=self.address, manifest_cache=manifests
        ), counter

    def client_args(self) -> list[str]:
        """``--server`` and TLS options for CLI invocations and benchmark child processes."""
        args = ["--server", self.address]
        return args + (["--insecure"] if self.tls_dir is None else ["--tls-dir", str(self.tls_dir)])

    def stored(self) -> dict[str, int]:
        """Bytes the server keeps on disk: chunks (packs or one file each), manifests, metadata
        (Valkey AOF/RDB)."""
        parts = {name: dir_bytes(self.data_dir / name) for name in ("chunks", "manifests", "valkey")}
        parts["chunks"] += dir_bytes(self.data_dir / "packs")
        parts["total"] = sum(parts.values())
        return parts

    def disk(self) -> tuple[int, int]:
        """(apparent, allocated) bytes of the whole data dir, folders included: chunks, packs,
        manifests, the embedded Valkey's files, everything the server keeps, as ``du`` sees it."""
        apparent, allocated, _, _ = disk_usage(self.data_dir)
        return apparent, allocated


def _busy_seconds() -> float:
    """CPU seconds used by the whole machine so far (Linux /proc/stat), 0 elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    try:
        t = proc.cpu_times()
        return t.user + t.system
    except psutil.Error:
        return 0.0


def _own_cpu() -> float:
    """CPU of this process plus its finished children (restic, borg, client processes...)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


class CpuProbe:
    """CPU seconds spent by the server, its Valkey, the client side and everything else, from
    construction to :meth:`stop`. On a shared 2-core machine "others" says how fair a timing was."""

    def __init__(self, server: BenchServer | None = None) -> None:
        self._server = psutil.Process(server.pid) if server is not None else None
        children = self._server.children() if self._server is not None else []
        self._valkey = children[0] if children else None
        self._start = (time.perf_counter(), _cpu(self._server), _cpu(self._valkey), _own_cpu(), _busy_seconds())

    def stop(self) -> dict[str, float]:
        """Seconds of wall clock and of CPU per party since the probe started."""
        wall0, server0, valkey0, own0, busy0 = self._start
        wall = time.perf_counter() - wall0
        server, valkey, own = _cpu(self._server) - server0, _cpu(self._valkey) - valkey0, _own_cpu() - own0
        busy = _busy_seconds() - busy0
        return {"wall": wall, "server_cpu": server, "valkey_cpu": valkey, "client_cpu": own,
                "others_cpu": max(0.0, busy - server - valkey - own)}
