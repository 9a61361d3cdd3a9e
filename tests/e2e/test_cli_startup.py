"""Start-up of the CLI: the entry module and the light commands load none of the heavy modules.

Structural properties, checked in fresh interpreters; the wall times are in bench/startup.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from server_fixtures import ROOT

from cli.client import StratusClient
from cli.lazy import lazy

# Each costs tens of milliseconds to import and belongs to the commands that use it.
HEAVY = ("grpc", "google.protobuf", "proto", "rich", "zstandard", "cryptography", "blake3", "pyfastcdc",
         "cas.pipeline", "cli.client", "cli.push", "cli.restore", "asyncio", "sqlite3")
# What `stat` needs is gRPC and protobuf; the transfer pipeline, signing and people's output are not.
TRANSFER_ONLY = ("zstandard", "cryptography", "pyfastcdc", "cas.pipeline", "cli.upload", "cli.download",
                 "cli.push", "cli.restore", "rich")

_RUN = """
import json, sys
argv = json.loads(sys.argv[1])
import cli.main
if argv:
    try:
        cli.main.app(argv, prog_name="stratus")
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if code:
        sys.exit(code)
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded_modules(*argv: str) -> tuple[set[str], str]:
    """Modules loaded by a fresh interpreter that imports cli.main and runs ``argv``, and its stdout."""
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(list(argv))], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stderr.strip().splitlines()[-1])), done.stdout


def imported(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_entry_module_imports_no_heavy_module():
    modules, _ = loaded_modules()
    assert "typer" in modules and "cli.main" in modules
    assert imported(modules, HEAVY) == []


def test_help_lists_every_command_without_grpc_or_the_pipeline():
    modules, out = loaded_modules("--help")
    for command in ("put", "get", "ls", "log", "stat", "rm", "diff", "watch", "info", "serve", "demo", "certs"):
        assert f" {command} " in out
    # typer renders the help with rich; nothing else heavy is needed to print it
    assert imported(modules, HEAVY) == ["rich"]


def test_stat_loads_grpc_but_not_the_transfer_pipeline(server):
    path = f"startup-{uuid.uuid4().hex[:10]}/f.txt"
    with StratusClient(server.channel()) as client:
        client.put_bytes(b"hello\n" * 100, path)
    modules, out = loaded_modules("--server", server.address, "--insecure", "--json", "stat", path)
    assert json.loads(out)["path"] == path and json.loads(out)["size"] == 600
    assert "grpc" in modules and "cli.client" in modules
    assert imported(modules, TRANSFER_ONLY) == []


def test_deferred_names_resolve_on_first_use():
    dumps = lazy("json", "dumps")
    decoder = lazy("json.decoder")
    assert dumps({"a": 1}) == '{"a": 1}'
    assert decoder.JSONDecodeError is json.JSONDecodeError
    assert "json.dumps" in repr(dumps)
    missing = lazy("json", "no_such_name")
    try:
        missing()
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("a missing name must fail on first use")
