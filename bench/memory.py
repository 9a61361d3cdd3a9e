"""Peak RSS of the server and of a client while a large file goes up and comes back down.

The file (4 GiB, 512 MiB with --quick) never exists: a client process (``python -m bench.memory``)
uploads a :class:`bench.datasets.MixedStream` with ``put_stream`` and downloads it again with
``get_stream`` into a writer that only counts (every chunk and the whole-file BLAKE3 are still
verified). Meanwhile this process samples the RSS of the server, its Valkey and the client with
psutil every 50 ms. Memory must stay flat: it may not grow with the file size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import psutil

from bench.datasets import MixedStream, Workspace
from bench.servers import ROOT, BenchServer, CpuProbe, settle

MIB = 1024 * 1024
SAMPLE_SECONDS = 0.05


class _Discard:
    """A binary writer that keeps nothing."""

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def child_main(argv: list[str]) -> None:
    """Client process: announce each phase on stdout, then print the result as JSON."""
    from cli.client import StratusClient

    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--tls-dir", required=True)
    p.add_argument("--size", type=int, required=True)
    args = p.parse_args(argv)
    client = StratusClient.connect(args.address, tls_dir=args.tls_dir)
    client.server_info()
    print("phase upload", flush=True)
    start = time.perf_counter()
    put = client.put_stream(MixedStream(args.size, seed=11), "mem/big.bin", size=args.size)
    upload = time.perf_counter() - start
    print("phase download", flush=True)
    sink = _Discard()
    start = time.perf_counter()
    got = client.get_stream("mem/big.bin", sink)
    download = time.perf_counter() - start
    client.close()
    print(json.dumps({"upload_seconds": upload, "download_seconds": download, "bytes_sent": put.bytes_sent,
                      "bytes_fetched": got.bytes_fetched, "downloaded": sink.bytes}), flush=True)


def _rss(proc: psutil.Process | None) -> int:
    if proc is None:
        return 0
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def run(ws: Workspace) -> dict:
    """The memory group: peak RSS per process and phase, plus the sampled timeline."""
    size = ws.sizes.memory
    with BenchServer(ws.dir("memory/server"), ws.pki()) as server:
        server_proc = psutil.Process(server.pid)
        children = server_proc.children()
        valkey = children[0] if children else None
        cmd = [sys.executable, "-m", "bench.memory", "--address", server.address, "--tls-dir", str(ws.pki()),
               "--size", str(size)]
        ws.log(f"memory: moving {size // MIB} MiB up and down")
        baseline_server = _rss(server_proc)
        settle()
        probe = CpuProbe(server)
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        client_proc = psutil.Process(child.pid)
        phase = ["start"]
        lines: list[str] = []

        def read() -> None:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line.strip())
                if line.startswith("phase "):
                    phase[0] = line.split()[1]
            phase[0] = "done"

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        timeline: list[tuple[float, str, int, int, int]] = []
        t0 = time.perf_counter()
        baseline_client = 0
        while child.poll() is None:
            client_rss = _rss(client_proc)
            if phase[0] == "start":
                baseline_client = max(baseline_client, client_rss)
            timeline.append((time.perf_counter() - t0, phase[0], _rss(server_proc), client_rss, _rss(valkey)))
            time.sleep(SAMPLE_SECONDS)
        reader.join(5)
        cpu = probe.stop()
        stderr = child.stderr.read() if child.stderr else ""
        if child.returncode != 0:
            raise RuntimeError(f"memory client failed: {stderr.strip()[-1500:]}")
    result = json.loads(lines[-1])
    peaks: dict = {}
    for name, column in (("server", 2), ("client", 3), ("valkey", 4)):
        for ph in ("upload", "download"):
            values = [row[column] for row in timeline if row[1] == ph]
            peaks[f"{name}_{ph}_peak_mib"] = max(values) / MIB if values else None
        peaks[f"{name}_peak_mib"] = max(row[column] for row in timeline) / MIB
    result.update(peaks)
    result.update({
        "size": size, "upload_mb_per_s": size / result["upload_seconds"] / 1e6,
        "download_mb_per_s": size / result["download_seconds"] / 1e6,
        "server_baseline_mib": baseline_server / MIB, "client_baseline_mib": baseline_client / MIB,
        "samples": len(timeline), "cpu": cpu,
        # a thinned timeline for the chart: (seconds, phase, server MiB, client MiB)
        "timeline": [(round(t, 2), ph, round(s / MIB, 1), round(c / MIB, 1)) for t, ph, s, c, _v in timeline[::4]],
    })
    return result


if __name__ == "__main__":
    child_main(sys.argv[1:])
