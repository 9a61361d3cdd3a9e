"""Real StratusVault servers for tests: separate processes on loopback, real gRPC, real Redis.

Each server gets its own data dir and its own Redis key prefix (deleted afterwards), so tests
never depend on, or leave anything in, the shared Redis database. The process itself is started
and stopped by :class:`cli.localserver.LocalServer`, the launcher that ``stratus demo`` and the
benchmarks use too.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
import redis

from cli.client import StratusClient
from cli.localserver import READY, LocalServer, server_env
from proto import stratus_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["READY", "ROOT", "RunningServer", "drop_prefix", "new_prefix", "run_to_exit"]


def new_prefix() -> str:
    """A fresh Redis key prefix for one server."""
    return f"svtest-{uuid.uuid4().hex[:12]}"


class RunningServer(LocalServer):
    """A test server: ``redis_url`` '' means the embedded Valkey; ``prefix`` is its Redis key prefix."""

    def __init__(self, data_dir: Path, redis_url: str, prefix: str, extra_args: Sequence[str] = (),
                 extra_env: dict[str, str] | None = None) -> None:
        super().__init__(data_dir, redis_url=redis_url, args=extra_args,
                         env={"STRATUS_REDIS_PREFIX": prefix, **(extra_env or {})})
        self.prefix = prefix

    def channel(self) -> grpc.Channel:
        """A new plaintext channel to the server."""
        return grpc.insecure_channel(
            self.address,
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
        )

    def stub(self) -> pb_grpc.StratusStub:
        """A raw API stub on a new channel."""
        return pb_grpc.StratusStub(self.channel())


def run_to_exit(server: LocalServer, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``server``'s command to its end with the output captured: for starts that must be refused."""
    return subprocess.run(server.command(), env=server_env(server.env), capture_output=True, text=True,
                          timeout=timeout)


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` from an external Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


@pytest.fixture
def prefix() -> str:
    """A fresh remote folder, so tests sharing a server never see each other's files."""
    return f"t-{uuid.uuid4().hex[:10]}/"


@pytest.fixture
def client(server: RunningServer) -> Iterator[StratusClient]:
    """A client of the module's server, connected the way the CLI connects (plaintext)."""
    with StratusClient.connect(server.address, insecure=True) as c:
        yield c


@pytest.fixture(scope="module")
def server(redis_url: str, tmp_path_factory: pytest.TempPathFactory):
    """A server per test module and metadata backend, with its own data dir and key prefix."""
    prefix = new_prefix()
    running = RunningServer(tmp_path_factory.mktemp("server"), redis_url, prefix).start()
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


@pytest.fixture
def fresh_server(redis_url: str, tmp_path: Path):
    """A server for one test (for tests that restart or kill it)."""
    prefix = new_prefix()
    running = RunningServer(tmp_path / "server", redis_url, prefix).start()
    try:
        yield running
    finally:
        running.kill()
        drop_prefix(redis_url, prefix)
