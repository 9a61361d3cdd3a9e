"""Real StratusVault servers for tests: separate processes on loopback, real gRPC, real Redis.

Each server gets its own data dir and its own Redis key prefix (deleted afterwards), so tests
never depend on, or leave anything in, the shared Redis database.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import redis

from proto import stratus_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"serving on (\S+):(\d+)")


@dataclass
class RunningServer:
    """A server process and how to reach it."""

    data_dir: Path
    redis_url: str  # empty: embedded Valkey
    prefix: str
    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    address: str = ""

    def start(self) -> RunningServer:
        """Start the process and wait until it announces its port."""
        args = [sys.executable, "-m", "service.server", "--data-dir", str(self.data_dir),
                "--listen", "127.0.0.1:0", *self.extra_args]
        if "--tls-dir" not in self.extra_args:
            args.append("--insecure")
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        env = {**os.environ, "STRATUS_REDIS_PREFIX": self.prefix, "PYTHONPATH": str(ROOT), **self.extra_env}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=None, env=env, cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = READY.search(line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} (exit {self.proc.wait()})")
        self.address = f"127.0.0.1:{match.group(2)}"
        return self

    def channel(self) -> grpc.Channel:
        """A new plaintext channel to the server."""
        return grpc.insecure_channel(
            self.address,
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
        )

    def stub(self) -> pb_grpc.StratusStub:
        """A raw API stub on a new channel."""
        return pb_grpc.StratusStub(self.channel())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the process with ``sig`` and return its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.stdout:
                self.proc.stdout.close()

    def kill(self) -> None:
        """SIGKILL the server (and nothing else: an embedded Valkey is its own process)."""
        self.stop(signal.SIGKILL)


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
    prefix = f"svtest-{uuid.uuid4().hex[:12]}"
    running = RunningServer(tmp_path_factory.mktemp("server"), redis_url, prefix).start()
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


@pytest.fixture
def fresh_server(redis_url: str, tmp_path: Path):
    """A server for one test (for tests that restart or kill it)."""
    prefix = f"svtest-{uuid.uuid4().hex[:12]}"
    running = RunningServer(tmp_path / "server", redis_url, prefix).start()
    try:
        yield running
    finally:
        running.stop(signal.SIGKILL)
        drop_prefix(redis_url, prefix)
