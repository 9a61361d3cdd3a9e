"""A metadata store is bound to its data dir: real server processes refuse a mismatched pair."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import redis
from server_fixtures import RunningServer, drop_prefix, new_prefix, run_to_exit

from cli.client import StratusClient
from cli.localserver import LocalServer
from service.binding import STORE_ID_FILE


@pytest.fixture
def prefix(redis_url):
    name = new_prefix()
    yield name
    drop_prefix(redis_url, name)


def refused(data_dir: Path, redis_url: str, prefix: str) -> str:
    """Start a server that must refuse; returns its one-line message on stderr."""
    proc = run_to_exit(RunningServer(data_dir, redis_url, prefix))
    assert proc.returncode != 0, proc.stdout
    assert "serving on" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("stratus serve:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def put(server: RunningServer, data: bytes, path: str) -> None:
    with StratusClient.connect(server.address, insecure=True) as client:
        client.put_bytes(data, path)


def read(server: RunningServer, path: str) -> bytes:
    with StratusClient.connect(server.address, insecure=True) as client:
        return client.get_bytes(path)


def store_id(data_dir: Path) -> str:
    return (data_dir / STORE_ID_FILE).read_text().strip()


def test_second_data_dir_on_the_same_prefix_is_refused(redis_url, prefix, tmp_path):
    first = RunningServer(tmp_path / "a", redis_url, prefix).start()
    try:
        data = os.urandom(300_000)
        put(first, data, "f.bin")
        bound = store_id(tmp_path / "a")
        assert redis.Redis.from_url(redis_url).get(f"{prefix}:store-id").decode() == bound
        # A fresh data dir pointed at the populated metadata: refused, nothing written.
        message = refused(tmp_path / "b", redis_url, prefix)
        assert bound in message and "--data-dir" in message and str(tmp_path / "b") in message
        assert not (tmp_path / "b" / STORE_ID_FILE).exists()
        # Another store's data dir (its own id) on this metadata: refused, naming both ids.
        other_prefix = f"{prefix}-other"
        other = RunningServer(tmp_path / "c", redis_url, other_prefix).start()
        other.stop()
        drop_prefix(redis_url, other_prefix)
        message = refused(tmp_path / "c", redis_url, prefix)
        assert bound in message and store_id(tmp_path / "c") in message
        assert read(first, "f.bin") == data  # the running server is untouched
    finally:
        first.stop()
    # Restarted with the right pair, it serves its data.
    again = RunningServer(tmp_path / "a", redis_url, prefix).start()
    try:
        assert read(again, "f.bin") == data
        assert store_id(tmp_path / "a") == bound
    finally:
        again.stop()


def test_populated_data_dir_with_empty_metadata_is_refused(redis_url, prefix, tmp_path):
    server = RunningServer(tmp_path / "a", redis_url, prefix).start()
    put(server, os.urandom(100_000), "f.bin")
    server.stop()
    drop_prefix(redis_url, prefix)  # the metadata is lost
    message = refused(tmp_path / "a", redis_url, prefix)
    assert "rebuilt" in message and store_id(tmp_path / "a") in message
    # without the id file too (a data dir from before binding)
    (tmp_path / "a" / STORE_ID_FILE).unlink()
    assert "rebuilt" in refused(tmp_path / "a", redis_url, prefix)


def test_metadata_with_data_but_no_id(redis_url, prefix, tmp_path):
    """A store from before binding adopts an id on first start; a wrong data dir is refused."""
    server = RunningServer(tmp_path / "a", redis_url, prefix).start()
    data = os.urandom(100_000)
    put(server, data, "f.bin")
    server.stop()
    redis.Redis.from_url(redis_url).delete(f"{prefix}:store-id")
    (tmp_path / "a" / STORE_ID_FILE).unlink()
    # an empty data dir, or one with an id of its own, is not this metadata's data dir
    assert "holds data but no store id" in refused(tmp_path / "b", redis_url, prefix)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / STORE_ID_FILE).write_text("0c0c0c0c-0000-4000-8000-000000000000\n")
    assert "0c0c0c0c-0000-4000-8000-000000000000" in refused(tmp_path / "c", redis_url, prefix)
    # both sides populated and neither has an id: the pair is adopted and bound
    server = RunningServer(tmp_path / "a", redis_url, prefix).start()
    try:
        assert read(server, "f.bin") == data
        assert redis.Redis.from_url(redis_url).get(f"{prefix}:store-id").decode() == store_id(tmp_path / "a")
    finally:
        server.stop()


def test_embedded_valkey_lost_metadata_is_refused(tmp_path):
    """Embedded Valkey: a data dir whose Valkey files are gone is refused, then works once restored."""
    data_dir = tmp_path / "a"
    server = RunningServer(data_dir, "", "sv").start()
    data = os.urandom(100_000)
    put(server, data, "f.bin")
    server.stop()
    shutil.move(data_dir / "valkey", tmp_path / "valkey-saved")
    proc = run_to_exit(LocalServer(data_dir))
    assert proc.returncode != 0 and "rebuilt" in proc.stderr and store_id(data_dir) in proc.stderr
    shutil.rmtree(data_dir / "valkey")
    shutil.move(tmp_path / "valkey-saved", data_dir / "valkey")
    server = RunningServer(data_dir, "", "sv").start()
    try:
        assert read(server, "f.bin") == data
    finally:
        server.stop()
