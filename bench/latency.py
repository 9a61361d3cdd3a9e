"""Metadata latency under concurrency, and the server holding many Watch streams.

The server (mTLS, embedded Valkey) holds ``latency_files`` small files under ``lat/``. A child
process (so that its CPU and sockets are its own) runs grpc.aio clients, each on its own
connection (``grpc.use_local_subchannel_pool``: channels would otherwise share one TCP connection):

* ``Stat`` of a random file and ``ListFiles(prefix="lat/", page_size=100)`` with 1, 100 and 1000
  concurrent clients, each calling in a loop for a fixed time; p50/p99/mean and calls per second;
* then ``watchers`` Watch streams (10 per connection) on ``watch/`` from a fixed cursor, plus
  ``active_clients`` clients calling Stat/ListFiles, while a writer commits a small file every
  50 ms: errors of every kind, events delivered vs. expected, commit-to-delivery latency.

The client and the server share the machine's 2 cores, so at high concurrency the numbers
measure the pair, not the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from bench.datasets import Workspace
from bench.servers import ROOT, BenchServer, CpuProbe

LEVELS = (1, 100, 1000)
WATCH_WRITES = 20
WATCH_INTERVAL = 0.05
STREAMS_PER_CONNECTION = 10


def percentiles(samples: list[float]) -> dict:
    """p50, p90, p99, max and mean of latencies in seconds, reported in milliseconds."""
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {"count": len(ordered), "p50_ms": pick(0.50), "p90_ms": pick(0.90), "p99_ms": pick(0.99),
            "max_ms": ordered[-1] * 1000, "mean_ms": sum(ordered) / len(ordered) * 1000}


# ---- child process: the grpc.aio clients -------------------------------------------------------------


def _channel(address: str, tls_dir: str | None) -> grpc.aio.Channel:
    options = [("grpc.use_local_subchannel_pool", 1)]
    if tls_dir is None:
        return grpc.aio.insecure_channel(address, options=options)
    folder = Path(tls_dir)
    creds = grpc.ssl_channel_credentials(
        (folder / "ca.pem").read_bytes(), (folder / "client-key.pem").read_bytes(), (folder / "client.pem").read_bytes()
    )
    return grpc.aio.secure_channel(address, creds, options=options)


def _request(pb: object, method: str, files: int, rng: random.Random) -> object:
    if method == "Stat":
        return pb.StatRequest(path=f"lat/f{rng.randrange(files):05d}")  # type: ignore[attr-defined]
    return pb.ListFilesRequest(prefix="lat/", page_size=100)  # type: ignore[attr-defined]


def _caller(channel: grpc.aio.Channel, method: str, files: int, rng: random.Random) -> Callable[[], Awaitable]:
    """A no-argument coroutine factory making one ``method`` call on ``channel``."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from proto import stratus_pb2 as pb
    from proto import stratus_pb2_grpc as pb_grpc

    if method == "HealthCheck":
        check = health_pb2_grpc.HealthStub(channel).Check
        return lambda: check(health_pb2.HealthCheckRequest())
    call = getattr(pb_grpc.StratusStub(channel), method)
    return lambda: call(_request(pb, method, files, rng))


async def _load(channels: list[grpc.aio.Channel], method: str, seconds: float, files: int) -> dict:
    """``len(channels)`` clients calling ``method`` in a loop for ``seconds``; latency percentiles."""
    clients = len(channels)
    errors: dict[str, int] = {}
    samples: list[float] = []
    start = asyncio.Event()
    deadline = [0.0]
    ready = [0]

    async def client(index: int) -> None:
        call = _caller(channels[index], method, files, random.Random(index))
        try:
            await call()  # warm up (first use of this method on the connection), not measured
        except grpc.aio.AioRpcError as err:
            errors[err.code().name] = errors.get(err.code().name, 0) + 1
        ready[0] += 1
        await start.wait()
        clock = time.perf_counter
        while clock() < deadline[0]:
            t0 = clock()
            try:
                await call()
            except grpc.aio.AioRpcError as err:
                errors[err.code().name] = errors.get(err.code().name, 0) + 1
                continue
            samples.append(clock() - t0)

    t_wall = time.perf_counter()
    tasks = [asyncio.ensure_future(client(i)) for i in range(clients)]
    t_ready = time.perf_counter()
    while ready[0] < clients and time.perf_counter() - t_ready < 60:
        await asyncio.sleep(0.01)
    deadline[0] = time.perf_counter() + seconds
    start.set()
    await asyncio.gather(*tasks)
    return {"method": method, "clients": clients, "seconds": seconds, "calls_per_s": len(samples) / seconds,
            "errors": errors, "wall_seconds": time.perf_counter() - t_wall, **percentiles(samples)}


async def _watch(address: str, tls_dir: str | None, watchers: int, active: int, seconds: float, files: int) -> dict:
    from cas import codec
    from cas.digest import digest
    from proto import stratus_pb2 as pb
    from proto import stratus_pb2_grpc as pb_grpc

    errors: dict[str, int] = {}

    def fail(where: str, err: BaseException) -> None:
        code = err.code().name if isinstance(err, grpc.aio.AioRpcError) else type(err).__name__
        errors[f"{where}:{code}"] = errors.get(f"{where}:{code}", 0) + 1

    control = _channel(address, tls_dir)
    control_stub = pb_grpc.StratusStub(control)
    cursor = (await control_stub.Changes(pb.ChangesRequest(since="", limit=1, prefix="watch/"))).cursor
    committed: dict[str, float] = {}
    delivered: list[float] = []
    received = [0]
    stop = asyncio.Event()

    watch_channels = [_channel(address, tls_dir) for _ in range(max(1, watchers // STREAMS_PER_CONNECTION))]
    watch_stubs = [pb_grpc.StratusStub(c) for c in watch_channels]
    opened = [0]

    async def watcher(index: int) -> None:
        call = watch_stubs[index % len(watch_stubs)].Watch(pb.WatchRequest(prefix="watch/", since=cursor))
        opened[0] += 1
        try:
            async for event in call:
                now = time.perf_counter()
                received[0] += 1
                sent = committed.get(event.path)
                if sent is not None:
                    delivered.append(now - sent)
                if stop.is_set():
                    break
        except grpc.aio.AioRpcError as err:
            if not stop.is_set() or err.code() != grpc.StatusCode.CANCELLED:
                fail("watch", err)
        finally:
            call.cancel()

    active_channels = [_channel(address, tls_dir) for _ in range(active)]
    samples: list[float] = []

    async def worker(index: int) -> None:
        stub = pb_grpc.StratusStub(active_channels[index])
        rng = random.Random(index)
        while not stop.is_set():
            method = "Stat" if rng.random() < 0.7 else "ListFiles"
            t0 = time.perf_counter()
            try:
                await getattr(stub, method)(_request(pb, method, files, rng))
                samples.append(time.perf_counter() - t0)
            except grpc.aio.AioRpcError as err:
                fail(method, err)

    async def writer() -> int:
        done = 0
        for i in range(WATCH_WRITES):
            data = f"event {i} {time.time()}\n".encode() * 8
            d = digest(data)
            try:
                batch = pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=codec.encode(data))])
                await control_stub.PutChunks(iter([batch]))
                path = f"watch/e{i:04d}"
                manifest = pb.Manifest(chunks=[pb.ChunkRef(digest=d, length=len(data))], size=len(data), file_digest=d)
                await control_stub.CommitFile(pb.CommitFileRequest(path=path, manifest=manifest))
                committed[path] = time.perf_counter()
                done += 1
            except grpc.aio.AioRpcError as err:
                fail("commit", err)
            await asyncio.sleep(WATCH_INTERVAL)
        return done

    watch_tasks = [asyncio.ensure_future(watcher(i)) for i in range(watchers)]
    t_start = time.perf_counter()
    await asyncio.sleep(1.0)  # let the streams open (they replay from the cursor anyway)
    workers = [asyncio.ensure_future(worker(i)) for i in range(active)]
    commits = await writer()
    remaining = max(0.0, seconds - (time.perf_counter() - t_start))
    await asyncio.sleep(remaining)
    # give the fan-out a moment to finish, then stop everything
    for _ in range(50):
        if received[0] >= commits * watchers:
            break
        await asyncio.sleep(0.1)
    stop.set()
    for task in watch_tasks:
        task.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    await asyncio.gather(*watch_tasks, return_exceptions=True)
    for c in [control, *watch_channels, *active_channels]:
        await c.close()
    return {"watchers": watchers, "opened": opened[0], "active_clients": active, "commits": commits,
            "events_expected": commits * watchers, "events_received": received[0], "errors": errors,
            "error_count": sum(errors.values()), "delivery": percentiles(delivered),
            "wall_seconds": time.perf_counter() - t_start,
            "active_calls": percentiles(samples)}


async def _child(args: argparse.Namespace) -> dict:
    # One connection per client, opened once (and TLS-handshaken) for every level.
    channels = [_channel(args.address, args.tls_dir) for _ in range(max(LEVELS))]
    t0 = time.perf_counter()
    await asyncio.gather(*(c.channel_ready() for c in channels))
    connect_seconds = time.perf_counter() - t0
    levels = [await _load(channels[:1], "HealthCheck", args.seconds, args.files)]
    for method in ("Stat", "ListFiles"):
        for clients in LEVELS:
            levels.append(await _load(channels[:clients], method, args.seconds, args.files))
    for c in channels:
        await c.close()
    watch = await _watch(args.address, args.tls_dir, args.watchers, args.active, max(3.0, 2 * args.seconds),
                         args.files)
    return {"levels": levels, "watch": watch, "connect_seconds": connect_seconds, "connections": len(channels)}


def child_main(argv: list[str]) -> None:
    """Entry of the client process (``python -m bench.latency ...``): prints JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--address", required=True)
    p.add_argument("--tls-dir")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--files", type=int, default=1000)
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--active", type=int, default=100)
    print(json.dumps(asyncio.run(_child(p.parse_args(argv)))))


# ---- parent: server, files, child ------------------------------------------------------------------


def populate(server: BenchServer, files: int) -> float:
    """Write ``files`` small files under ``lat/``; returns seconds."""
    client, _ = server.client()
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: client.put_bytes(f"file {i}\n".encode() * 20, f"lat/f{i:05d}"), range(files)))
    client.close()
    return time.perf_counter() - start


def run(ws: Workspace) -> dict:
    """The latency group: returns every figure."""
    sizes = ws.sizes
    with BenchServer(ws.dir("latency/server"), ws.pki()) as server:
        ws.log(f"latency: writing {sizes.latency_files} files")
        populate_seconds = populate(server, sizes.latency_files)
        cmd = [sys.executable, "-m", "bench.latency", "--address", server.address, "--tls-dir", str(ws.pki()),
               "--seconds", str(sizes.latency_seconds), "--files", str(sizes.latency_files),
               "--watchers", str(sizes.watchers), "--active", str(sizes.active_clients)]
        ws.log("latency: Stat/ListFiles at 1/100/1000 clients, then watchers")
        probe = CpuProbe(server)
        child = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        cpu = probe.stop()
        if child.returncode != 0:
            raise RuntimeError(f"latency client failed: {child.stderr.strip()[-1500:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
    result["populate_seconds"] = populate_seconds
    result["files"] = sizes.latency_files
    result["cpu"] = cpu
    return result


if __name__ == "__main__":
    child_main(sys.argv[1:])
