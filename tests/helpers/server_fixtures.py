"""Real StratusVault servers for tests: separate processes on loopback, real gRPC, real Redis.

Each server gets its own data dir and its own Redis key prefix (deleted afterwards), so tests
never depend on, or leave anything in, the shared Redis database. The process itself is started
and stopped by :class:`cli.localserver.LocalServer`, the launcher that ``stratus demo`` and the
benchmarks use too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
import redis

from cli.localserver import READY, LocalServer
from proto import stratus_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["READY", "ROOT", "RunningServer", "drop_prefix", "new_prefix"]


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


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` from an external Redis."""
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])
    finally:
        client.close()


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
