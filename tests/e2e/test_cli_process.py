"""``stratus`` as real processes: error output of the actual entry point, ``stratus serve`` with
mutual TLS, a live ``watch``, and ``stratus demo`` end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cli_helpers import Cli, isolated_env, overrides, run_process, start_process

from cli.client import StratusClient
from cli.localserver import LocalServer

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


def test_unreachable_server_one_line_no_traceback(tmp_path):
    env = isolated_env(tmp_path)
    done = run_process(["--server", "127.0.0.1:1", "--insecure", "ls"], env)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the StratusVault server at 127.0.0.1:1" in lines[0]
    assert "Traceback" not in done.stderr
    debug = run_process(["--debug", "--server", "127.0.0.1:1", "--insecure", "ls"], env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_serve_with_mutual_tls(tmp_path):
    env = isolated_env(tmp_path)
    tls = tmp_path / "tls"
    assert run_process(["certs", "init", str(tls), "--client", "alice"], env).returncode == 0
    server = LocalServer(tmp_path / "data", tls_dir=tls, env=overrides(env), log=tmp_path / "serve.err",
                         through_cli=True).start()
    try:
        assert re.search(r"serving on \S+:\d+ \[mTLS\]", server.ready_line), server.ready_line
        address = server.address
        src = tmp_path / "f.txt"
        src.write_text("over mutual TLS")
        put = run_process(["--server", address, "--tls-dir", str(tls), "--json", "put", str(src), "f.txt"], env)
        assert put.returncode == 0, put.stderr
        listing = run_process(["--server", address, "--json", "ls"], {**env, "STRATUS_TLS_DIR": str(tls)})
        files = json.loads(listing.stdout)["files"]
        assert [(f["path"], f["identity"]) for f in files] == [("f.txt", "alice")]
        refused = run_process(["--server", address, "--insecure", "ls"], env)  # no client certificate
        assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    finally:
        assert server.stop() == 0


def test_watch_prints_live_events(server, prefix, tmp_path):
    env = isolated_env(tmp_path)
    watcher = start_process(["--server", server.address, "--insecure", "--json", "watch", prefix, "--count", "2"],
                            env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with StratusClient.connect(server.address, insecure=True) as client:
            deadline = time.monotonic() + 20
            # the watch starts "from now": keep writing until it has seen two events
            n = 0
            while watcher.poll() is None and time.monotonic() < deadline:
                client.put_bytes(f"live {n}".encode(), f"{prefix}live{n}")
                n += 1
                time.sleep(0.2)
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert len(events) == 2 and all(e["path"].startswith(prefix + "live") for e in events)
    assert events[0]["cursor"] < events[1]["cursor"] or len(events[0]["cursor"]) < len(events[1]["cursor"])


def test_watch_exits_0_on_ctrl_c(server, tmp_path):
    env = isolated_env(tmp_path)
    watcher = start_process(["--server", server.address, "--insecure", "watch"], env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert watcher.stderr is not None
    assert "watching" in watcher.stderr.readline()
    # An event on stdout shows the stream is up, however long a loaded machine took to open it.
    with StratusClient.connect(server.address, insecure=True) as writer:
        writer.put_bytes(b"ping", f"watch-{tmp_path.name}/ping")
    assert watcher.stdout is not None and "ping" in watcher.stdout.readline()
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    cli = Cli("unused", tmp_path, isolated_env(tmp_path))
    data = tmp_path / "demo"
    doc = cli.json("demo", "--data-dir", str(data), "--no-wait", "--listen", "127.0.0.1:0")
    assert doc["first_upload"]["bytes_sent"] > 12 * 1024 * 1024  # half the sample is incompressible
    second = doc["second_upload"]
    assert second["version"] == doc["first_upload"]["version"] + 1
    # The README: one chunk, well under 1% of the file, travels. Content-defined cuts can make it
    # up to three: the edit may straddle a cut point, or make or remove one, which re-cuts the next
    # chunk before the chunker falls back in step. Measured: 1 of 318 chunks, 188,615 bytes of 24 MiB.
    assert 1 <= second["chunks_sent"] <= 3 and second["chunks_sent"] * 100 < second["chunks_total"], second
    assert 0 < second["bytes_sent"] <= second["chunks_sent"] * (256 * 1024 + 1024), second
    assert [d["verified"] for d in doc["downloads"]] == [True, True]
    assert doc["store"]["logical_bytes"] >= 2 * doc["sample_bytes"]
    assert (data / "tls" / "ca.pem").is_file() and Path(doc["server_log"]).is_file()
    # the server was stopped: nothing listens on its address any more
    gone = run_process(["--server", doc["address"], "--tls-dir", doc["tls_dir"], "ls"], isolated_env(tmp_path))
    assert gone.returncode == 1
    human = cli("demo", "--data-dir", str(data), "--no-wait", "--listen", "127.0.0.1:0", "--size-mib", "4",
                connect=False).stdout
    assert "using the certificates" in human and "changed 4 KiB in the middle" in human and "identical" in human
