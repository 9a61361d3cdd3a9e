"""Transfer over loopback gRPC (issues #4 and #6): throughput, re-upload, deltas, cost of TLS.

On the ``mixed`` file (1 GiB; half incompressible, half text-like):

* fresh upload and download, MB/s, on an mTLS server and on a plaintext (``--insecure``) one,
  interleaved (TLS up, plain up, TLS down, plain down) so that drift in the machine's load hits
  both alike; with ``tls_rounds`` > 1 each round uses fresh servers and the best round counts;
* on the mTLS server of the first round: re-upload of the unchanged file, then three edits in a
  row (10 scattered 4 KiB overwrites, a 1-byte insertion at the front, a 1 MiB append), each
  uploaded as a new version: seconds, protocol bytes sent and received, chunks sent;
* a delta download: the latest version onto the local copy of the first one.

The client runs in this process through :class:`cli.client.StratusClient` (the CLI's code);
downloads go to files on disk (temp file, fsync, rename), as ``stratus get`` does. Every timing
starts after :func:`bench.servers.settle` (no dirty pages left from preparing the data).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench import datasets
from bench.datasets import Workspace
from bench.servers import BenchServer, CpuProbe, WireCounter, settle
from cli.client import StratusClient

REMOTE = "bench/mixed.bin"


def _upload(client: StratusClient, counter: WireCounter, server: BenchServer, path: Path) -> dict:
    stored_before = server.stored()["chunks"]
    settle()
    sent0, recv0 = counter.snapshot()
    probe = CpuProbe(server)
    start = time.perf_counter()
    result = client.put_file(path, REMOTE)
    seconds = time.perf_counter() - start
    cpu = probe.stop()
    sent1, recv1 = counter.snapshot()
    size = path.stat().st_size
    return {"seconds": seconds, "mb_per_s": size / seconds / 1e6, "wire_sent": sent1 - sent0,
            "wire_received": recv1 - recv0, "frame_bytes": result.bytes_sent, "chunks_sent": result.chunks_sent,
            "chunks_total": result.chunks_total, "unchanged": result.unchanged, "version": result.version.version,
            "stored_growth": server.stored()["chunks"] - stored_before, "cpu": cpu}


def _download(client: StratusClient, counter: WireCounter, server: BenchServer, dest: Path) -> dict:
    settle()
    sent0, recv0 = counter.snapshot()
    probe = CpuProbe(server)
    start = time.perf_counter()
    result = client.get_file(REMOTE, dest)
    seconds = time.perf_counter() - start
    cpu = probe.stop()
    sent1, recv1 = counter.snapshot()
    size = dest.stat().st_size
    return {"seconds": seconds, "mb_per_s": size / seconds / 1e6, "wire_sent": sent1 - sent0,
            "wire_received": recv1 - recv0, "frame_bytes": result.bytes_fetched,
            "chunks_fetched": result.chunks_fetched, "chunks_reused": result.chunks_reused, "cpu": cpu}


def _round(ws: Workspace, index: int, pristine: Path, with_deltas: bool) -> dict:
    folder = ws.dir(f"transfer/round{index}")
    tls = BenchServer(folder / "tls", ws.pki()).start()
    plain = BenchServer(folder / "plain", None).start()
    out: dict = {}
    try:
        tls_client, tls_counter = tls.client()
        plain_client, plain_counter = plain.client()
        for c in (tls_client, plain_client):
            c.server_info()  # connection and TLS handshake are not part of the timings
        work = folder / pristine.name
        shutil.copyfile(pristine, work)
        ws.log(f"transfer round {index + 1}: fresh uploads")
        out["upload_tls"] = _upload(tls_client, tls_counter, tls, work)
        out["upload_plain"] = _upload(plain_client, plain_counter, plain, work)
        ws.log(f"transfer round {index + 1}: downloads")
        out["download_tls"] = _download(tls_client, tls_counter, tls, folder / "down-tls.bin")
        out["download_plain"] = _download(plain_client, plain_counter, plain, folder / "down-plain.bin")
        (folder / "down-plain.bin").unlink()
        plain_client.close()
        if with_deltas:
            ws.log("transfer: re-upload and deltas")
            out["reupload_unchanged"] = _upload(tls_client, tls_counter, tls, work)
            for label, edit in (("edit_10x4k", datasets.scattered_edits), ("insert_front_1b", datasets.insert_front),
                                ("append_1m", datasets.append)):
                edit(work)
                out[label] = _upload(tls_client, tls_counter, tls, work)
            out["delta_download"] = _download(tls_client, tls_counter, tls, folder / "down-tls.bin")
            out["stored"] = tls.stored()
        tls_client.close()
    finally:
        tls.stop()
        plain.stop()
        shutil.rmtree(folder, ignore_errors=True)
    return out


def run(ws: Workspace) -> dict:
    """The transfer group: every figure, plus the best-of-rounds summary."""
    pristine = ws.mixed()
    size = pristine.stat().st_size
    rounds = [_round(ws, i, pristine, with_deltas=(i == 0)) for i in range(ws.sizes.tls_rounds)]
    best = {key: max(r[key]["mb_per_s"] for r in rounds)
            for key in ("upload_tls", "upload_plain", "download_tls", "download_plain")}
    summary = {
        "size": size,
        "upload_mb_per_s": best["upload_tls"],
        "download_mb_per_s": best["download_tls"],
        "upload_plain_mb_per_s": best["upload_plain"],
        "download_plain_mb_per_s": best["download_plain"],
        # time with TLS over time without, minus one: what encryption costs
        "tls_cost_upload_pct": (best["upload_plain"] / best["upload_tls"] - 1) * 100,
        "tls_cost_download_pct": (best["download_plain"] / best["download_tls"] - 1) * 100,
    }
    return {"summary": summary, "rounds": rounds}
