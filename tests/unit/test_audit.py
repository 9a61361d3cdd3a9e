"""Audit log: one well-formed JSON line per call, whatever the caller sends and however many write."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading

import grpc
import pytest

from service.audit import AuditLog

KEYS = {"time", "identity", "peer", "method", "path", "version", "bytes", "status", "duration_ms"}


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_log_writes_one_json_line_per_call(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog.open(path) as audit:
        assert audit.enabled
        audit.record(method="CommitFile", identity="alice", peer="ipv4:127.0.0.1:5000", path="a/b.txt",
                     version=3, nbytes=1234, status=grpc.StatusCode.OK, duration_ms=1.23456,
                     namespace="alice")
        audit.record(method="GetChunks", identity="bob", status=grpc.StatusCode.NOT_FOUND)
    first, second = _lines(path)
    assert KEYS <= set(first)
    assert first["identity"] == "alice" and first["path"] == "a/b.txt" and first["version"] == 3
    assert first["bytes"] == 1234 and first["status"] == "OK" and first["duration_ms"] == 1.235
    assert first["namespace"] == "alice" and first["time"].endswith("Z")
    assert second["status"] == "NOT_FOUND" and second["path"] is None and "namespace" not in second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_hostile_values_cannot_forge_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    with AuditLog.to_file(path) as audit:
        evil = 'x"}\n{"identity":"root","method":"Delete\u2028'
        audit.record(method="Stat", identity=evil, path="caf\u00e9/\x1b[31mred\udc80")
    (entry,) = _lines(path)
    assert entry["identity"] == evil
    assert path.read_bytes().isascii() and path.read_bytes().count(b"\n") == 1


def test_appends_and_reopens_after_rotation(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"old": true}\n')
    audit = AuditLog.open(str(path))
    audit.record(method="A")
    os.rename(path, tmp_path / "audit.jsonl.1")
    audit.record(method="B")  # still goes to the rotated file until reopened
    audit.reopen()
    audit.record(method="C")
    audit.close()
    audit.record(method="after close")  # ignored, not an error
    assert [e.get("method") for e in _lines(tmp_path / "audit.jsonl.1")] == [None, "A", "B"]
    assert [e["method"] for e in _lines(path)] == ["C"]


def test_concurrent_threads_and_tasks_keep_lines_whole(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.to_file(path)
    long_path = "d/" + "é" * 3000  # larger than any pipe or stdio buffer

    def worker(n):
        for i in range(200):
            audit.record(method="Put", identity=f"t{n}", path=long_path, version=i)

    async def tasks():
        async def one(n):
            for i in range(100):
                audit.record(method="Get", identity=f"a{n}", version=i)
                await asyncio.sleep(0)

        await asyncio.gather(*(one(n) for n in range(10)))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()
    audit.close()
    entries = _lines(path)
    assert len(entries) == 8 * 200 + 10 * 100
    for n in range(8):
        assert [e["version"] for e in entries if e["identity"] == f"t{n}"] == list(range(200))
    assert all(e["path"] == long_path for e in entries if e["method"] == "Put")


def test_stderr_and_disabled_sinks(capsys):
    AuditLog.open("-").record(method="Info", identity="ops")
    err = capsys.readouterr().err
    assert json.loads(err)["method"] == "Info"
    for disabled in (AuditLog.open(""), AuditLog.open(None), AuditLog.disabled()):
        assert not disabled.enabled
        disabled.record(method="x")
        with disabled.call("y") as call:
            call.nbytes = 1
    assert capsys.readouterr() == ("", "")


def test_call_context_manager(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.to_file(path)
    with audit.call("Upload", identity="alice", peer="p", path="f") as call:
        call.nbytes += 10
        call.version = 2
    with pytest.raises(KeyError):
        with audit.call("Download", identity="bob"):
            raise KeyError("nope")
    with audit.call("Stat") as call:
        call.finish(grpc.StatusCode.PERMISSION_DENIED)
        call.finish("ignored")
    audit.close()
    ok, failed, denied = _lines(path)
    assert (ok["status"], ok["bytes"], ok["version"], ok["path"]) == ("OK", 10, 2, "f")
    assert ok["duration_ms"] >= 0
    assert failed["status"] == "ERROR" and failed["error"] == "KeyError: 'nope'"
    assert denied["status"] == "PERMISSION_DENIED"


def test_reserved_extra_fields_are_refused(tmp_path):
    audit = AuditLog.to_file(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match="reserved"):
        audit.record(method="x", time="forged")
    audit.close()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_does_not_fail_calls(caplog):
    audit = AuditLog.to_file("/dev/full")  # every write fails with ENOSPC
    audit.record(method="x")
    audit.record(method="y")
    audit.close()
    assert audit.write_errors == 2
    assert len([r for r in caplog.records if "audit log write failed" in r.getMessage()]) == 1


class _Ctx:
    def auth_context(self):
        return {"x509_common_name": [b"carol"]}

    def peer(self):
        return "ipv6:[::1]:4242"


def test_observe_hook_takes_identity_from_context(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = AuditLog.to_file(path)
    audit.observe("ListFiles", _Ctx(), grpc.StatusCode.OK, 0.25, path="docs/")
    audit.close()
    (entry,) = _lines(path)
    assert entry["identity"] == "carol" and entry["peer"] == "ipv6:[::1]:4242"
    assert entry["duration_ms"] == 250.0 and entry["path"] == "docs/" and entry["method"] == "ListFiles"
