"""The local-server launcher (cli.localserver) that tests, benchmarks and ``stratus demo`` share:
a real ``python -m service.server`` child, its address once it serves, clear refusals, clean stops."""

from __future__ import annotations

import pytest

from cas.errors import CasError
from cli.client import StratusClient
from cli.localserver import LocalServer


def test_starts_serves_and_stops_with_exit_0(tmp_path):
    with LocalServer(tmp_path / "data") as server:
        host, port = server.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0 and server.running()
        assert "serving on" in server.ready_line and "[PLAINTEXT" in server.ready_line
        with StratusClient.connect(server.address, insecure=True) as client:
            client.put_bytes(b"through the launcher", "f")
            assert client.get_bytes("f") == b"through the launcher"
    assert not server.running() and server.proc is not None and server.proc.returncode == 0


def test_the_child_gets_none_of_the_callers_stratus_settings(tmp_path, monkeypatch):
    """A caller's STRATUS_* variable (here one the server would refuse) never reaches the child; ``env`` does."""
    monkeypatch.setenv("STRATUS_COMPRESSION_LEVEL", "not a number")
    with LocalServer(tmp_path / "data", env={"STRATUS_MAX_PAGE_SIZE": "33"}) as server:
        with StratusClient.connect(server.address, insecure=True) as client:
            info = client.server_info()
    assert info.max_page_size == 33 and info.compression_level == 3  # the default, not the caller's


def test_a_refused_start_raises_with_the_servers_reason(tmp_path):
    server = LocalServer(tmp_path / "data", listen="0.0.0.0:0", log=tmp_path / "server.log")
    with pytest.raises(CasError, match="--insecure-any-host"):
        server.start()
    assert not server.running() and server.proc is not None and server.proc.returncode != 0


def test_a_busy_port_is_refused_clearly(tmp_path):
    with LocalServer(tmp_path / "first") as first:
        second = LocalServer(tmp_path / "second", listen=first.address, log=tmp_path / "second.log")
        with pytest.raises(CasError, match=f"cannot listen on {first.address}"):
            second.start()
        assert not second.running()
        assert "Traceback" not in (tmp_path / "second.log").read_text()
