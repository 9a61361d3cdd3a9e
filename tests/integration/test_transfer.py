"""End-to-end transfers through StratusClient against a real server (real gRPC, Redis/Valkey, disk).

Every test uses fresh random content under its own remote prefix, so tests sharing a server never
deduplicate against each other by accident.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from cli_helpers import MIB, ROOT, write_random
from stored_chunks import flip_chunk

from cas.chunker import chunk_file
from cas.digest import digest, new_hasher
from cas.errors import (
    IntegrityError,
    MissingChunksError,
    NotFoundError,
    SignatureError,
    VersionConflictError,
)
from cli.client import StratusClient
from proto import stratus_pb2 as pb


def file_hash(path: Path) -> bytes:
    hasher = new_hasher()
    with open(path, "rb") as f:
        while piece := f.read(MIB):
            hasher.update(piece)
    return hasher.digest()


def folder_names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# ---- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3 * MIB + 12345])
def test_round_trip(client, prefix, tmp_path, size):
    src = write_random(tmp_path / "src", size)
    os.chmod(src, 0o640)
    put = client.put_file(src, prefix + "f")
    assert not put.unchanged and put.version.version == 1 and put.version.size == size
    assert put.bytes_read == size and put.chunks_sent == put.chunks_total
    assert (put.chunks_total == 0) == (size == 0)
    assert size <= 1 or put.chunks_total > 1
    dest = tmp_path / "out" / "copy"
    got = client.get_file(prefix + "f", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert got.chunks_fetched == put.chunks_total and got.chunks_reused == 0
    assert os.stat(dest).st_mode & 0o777 == 0o640
    assert os.stat(dest).st_mtime_ns == os.stat(src).st_mtime_ns
    assert client.get_bytes(prefix + "f") == src.read_bytes()
    assert client.stat(prefix + "f").file_digest == digest(src.read_bytes())
    assert folder_names(dest.parent) == ["copy"]


@pytest.mark.slow
def test_round_trip_200_mib_with_bounded_memory(server, prefix, tmp_path):
    src = write_random(tmp_path / "big", 200 * MIB)
    # A separate process, so its peak RSS measures the client alone; a small transfer first sets
    # the baseline (interpreter, gRPC, thread pools), then the big one must not grow it by much.
    script = f"""
import json, resource, sys
from cli.client import StratusClient
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
with StratusClient.connect({server.address!r}, insecure=True) as c:
    c.put_bytes(bytes(300_000), {prefix + "warm"!r})
    c.get_file({prefix + "warm"!r}, {str(tmp_path / "warm")!r})
    base = rss()
    put = c.put_file({str(src)!r}, {prefix + "big"!r})
    got = c.get_file({prefix + "big"!r}, {str(tmp_path / "copy")!r})
print(json.dumps({{"growth_mib": rss() - base, "sent": put.chunks_sent, "total": put.chunks_total,
                  "read": put.bytes_read, "fetched": got.chunks_fetched}}))
"""
    args = [sys.executable, "-c", script]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["read"] == 200 * MIB and result["sent"] == result["total"] == result["fetched"]
    assert file_hash(tmp_path / "copy") == file_hash(src)
    # Streaming, not buffering: the transfer windows (chunk pipeline, ~2 MiB batches, two download
    # windows) are bounded, so the growth is a fixed cost far below the file: measured ~32 MiB for
    # this 200 MiB file. Buffering even a third of the file would fail. Figures live in bench/.
    assert result["growth_mib"] < 64, result


def test_get_stream_writes_verified_bytes(client, prefix, tmp_path):
    src = write_random(tmp_path / "src", 2 * MIB + 7)
    client.put_file(src, prefix + "s")
    sink = io.BytesIO()
    got = client.get_stream(prefix + "s", sink)
    assert sink.getvalue() == src.read_bytes()
    assert got.chunks_total > 1


def test_put_stream_and_bytes(client, prefix):
    data = os.urandom(MIB + 3)
    r, w = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
    writer.start()
    with os.fdopen(r, "rb") as pipe:
        put = client.put_stream(pipe, prefix + "piped", mode=0o600)
    writer.join()
    assert put.bytes_read == len(data)
    assert client.get_bytes(prefix + "piped") == data
    again = client.put_bytes(data, prefix + "piped", mode=0o600)
    assert again.unchanged and again.bytes_sent == 0


def test_progress_reaches_the_total(client, prefix, tmp_path):
    src = write_random(tmp_path / "src", 5 * MIB)
    seen: list[tuple[int, int | None]] = []
    client.put_file(src, prefix + "p", progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (5 * MIB, 5 * MIB)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    seen.clear()
    client.get_file(prefix + "p", tmp_path / "copy", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5 * MIB, 5 * MIB)


# ---- deltas --------------------------------------------------------------------------------------


def test_unchanged_reupload_sends_no_chunk_bytes(client, prefix, tmp_path):
    src = write_random(tmp_path / "src", 4 * MIB)
    first = client.put_file(src, prefix + "u")
    again = client.put_file(src, prefix + "u")
    assert again.unchanged and again.version.version == first.version.version
    assert again.chunks_sent == 0 and again.bytes_sent == 0
    assert again.chunks_total == first.chunks_total


def test_small_edit_moves_only_the_changed_chunks_both_ways(client, prefix, tmp_path):
    src = write_random(tmp_path / "src", 64 * MIB)
    v1 = client.put_file(src, prefix + "db")
    old_copy = tmp_path / "copy"
    client.get_file(prefix + "db", old_copy)
    with open(src, "r+b") as f:
        f.seek(32 * MIB)
        f.write(os.urandom(4096))
    v2 = client.put_file(src, prefix + "db")
    assert v2.version.version == v1.version.version + 1
    # The chunk holding the edit (two when it straddles a cut point), plus the next one or two
    # when the edit makes or removes a cut point and the chunker needs a chunk to fall back in step.
    assert 1 <= v2.chunks_sent <= 4, v2
    assert v2.bytes_sent <= 4 * (256 * 1024 + 64)
    assert v2.version.new_chunks == v2.chunks_sent

    # The local copy holds version 1: getting version 2 over it fetches only the new chunks.
    got = client.get_file(prefix + "db", old_copy)
    assert got.chunks_fetched == v2.chunks_sent
    assert got.chunks_reused == got.chunks_total - got.chunks_fetched
    assert got.bytes_fetched <= v2.bytes_sent
    assert file_hash(old_copy) == file_hash(src)

    # And back: version 1 over a copy of version 2.
    back = client.get_file(prefix + "db", old_copy, version=v1.version.version)
    assert 1 <= back.chunks_fetched <= 4
    assert client.stat(prefix + "db", version=1).file_digest == file_hash(old_copy)

    # Already up to date: nothing fetched, nothing rewritten.
    inode = os.stat(old_copy).st_ino
    same = client.get_file(prefix + "db", old_copy, version=1)
    assert same.up_to_date and same.chunks_fetched == 0 and os.stat(old_copy).st_ino == inode


def _missing_count(client: StratusClient, path: Path, digests: list[bytes] | None = None) -> tuple[int, int]:
    digests = digests or list(dict.fromkeys(digest(c.data) for c in chunk_file(path, client.params.chunking)))
    missing = client.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests)).missing
    return len(missing), len(digests)


INTERRUPTED_CLIENT = """
import sys
from cli.client import StratusClient
def report(done, total):
    print(done, total, flush=True)
with StratusClient.connect(sys.argv[1], insecure=True) as c:
    c.put_file(sys.argv[2], sys.argv[3], progress=report)
print("finished", flush=True)
"""


@pytest.mark.slow
def test_interrupted_upload_resumes_with_only_the_missing_chunks(client, server, prefix, tmp_path):
    src = write_random(tmp_path / "src", 96 * MIB)
    digests = list(dict.fromkeys(digest(c.data) for c in chunk_file(src, client.params.chunking)))
    proc = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_CLIENT, server.address, str(src), prefix + "resumed"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            done, _, total = line.partition(" ")
            assert done != "finished", "the upload finished before it could be interrupted"
            # Killed once well under way and some chunks are durable and indexed on the server
            # (they are every flush_bytes, while the stream goes on).
            if int(done) >= int(total) * 2 // 5 and _missing_count(client, src, digests)[0] < len(digests):
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    with pytest.raises(NotFoundError):
        client.stat(prefix + "resumed")  # nothing was committed
    missing, total = _missing_count(client, src)
    assert 0 < missing < total, (missing, total)
    rerun = client.put_file(src, prefix + "resumed")
    assert rerun.chunks_sent == missing
    assert rerun.chunks_total >= total
    assert _missing_count(client, src)[0] == 0
    assert client.stat(prefix + "resumed").file_digest == file_hash(src)


def test_chunks_lost_before_commit_are_sent_again(client, server, prefix, tmp_path):
    src = write_random(tmp_path / "src", 3 * MIB)
    client.put_file(src, prefix + "original")
    digests = list(dict.fromkeys(digest(c.data) for c in chunk_file(src, client.params.chunking)))
    index = f"{server.prefix}:{{default}}:chunks"
    r = redis.Redis.from_url(server.redis_url)
    try:
        assert all(r.hmget(index, digests))  # the index really holds them, so forgetting them matters

        def forget_chunks(done: int, total: int | None) -> None:
            # Called right after FindMissingChunks said "all present": the chunks vanish before the commit.
            r.hdel(index, *digests)

        copy = client.put_file(src, prefix + "copy", progress=forget_chunks)
        assert copy.chunks_sent == len(digests) and not copy.unchanged
        assert client.stat(prefix + "copy").file_digest == file_hash(src)
        assert _missing_count(client, src)[0] == 0

        # A pipe cannot be read twice: the error reaches the caller instead of a retry.
        data = src.read_bytes()
        rd, wr = os.pipe()
        feeder = threading.Thread(target=lambda: (os.write(wr, data), os.close(wr)))
        feeder.start()
        with os.fdopen(rd, "rb") as pipe, pytest.raises(MissingChunksError):
            client.put_stream(pipe, prefix + "piped", progress=forget_chunks)
        feeder.join()
        with pytest.raises(NotFoundError):
            client.stat(prefix + "piped")
    finally:
        r.close()


# ---- integrity -------------------------------------------------------------------------------------


def test_corrupt_chunk_on_server_raises_and_keeps_local_file(client, server, prefix, tmp_path):
    src = write_random(tmp_path / "src", 2 * MIB)
    client.put_file(src, prefix + "c")
    victim = digest(next(iter(chunk_file(src, client.params.chunking))).data)
    flip_chunk(server.data_dir, victim, -100)
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    dest = dest_dir / "c"
    dest.write_bytes(b"precious local data")
    with pytest.raises(IntegrityError):
        client.get_file(prefix + "c", dest)
    assert dest.read_bytes() == b"precious local data"
    assert folder_names(dest_dir) == ["c"]  # no temp file left behind
    with pytest.raises(IntegrityError):
        client.get_stream(prefix + "c", io.BytesIO())


def test_signed_versions(client, prefix, tmp_path):
    from cas import signing

    key = signing.generate_key()
    other = signing.generate_key()
    src = write_random(tmp_path / "src", MIB)
    put = client.put_file(src, prefix + "signed", sign_key=key.private_pem)
    assert put.version.signed and put.version.signer_public_key == key.public_key.hex()
    dest = tmp_path / "dest"
    client.get_file(prefix + "signed", dest, verify_key=key.public_key)
    assert dest.read_bytes() == src.read_bytes()

    dest.write_bytes(b"keep me")
    with pytest.raises(SignatureError):
        client.get_file(prefix + "signed", dest, verify_key=other.public_key)
    assert dest.read_bytes() == b"keep me"
    client.put_file(src, prefix + "unsigned")
    with pytest.raises(SignatureError, match="not signed"):
        client.get_file(prefix + "unsigned", tmp_path / "never", verify_key=key.public_key)
    assert not (tmp_path / "never").exists()


# ---- concurrency control and browsing ----------------------------------------------------------------


def test_if_version_conflicts(client, prefix):
    client.put_bytes(b"one", prefix + "v")
    with pytest.raises(VersionConflictError) as info:
        client.put_bytes(b"two", prefix + "v", if_version=0)
    assert (info.value.expected, info.value.actual) == (0, 1)
    assert client.put_bytes(b"two", prefix + "v", if_version=1).version.version == 2
    with pytest.raises(VersionConflictError):
        client.delete(prefix + "v", if_version=1)
    assert client.delete(prefix + "v", if_version=2).deleted


def test_missing_paths_raise_not_found(client, prefix, tmp_path):
    dest = tmp_path / "keep"
    dest.write_bytes(b"keep")
    with pytest.raises(NotFoundError):
        client.get_file(prefix + "nothing", dest)
    assert dest.read_bytes() == b"keep"
    with pytest.raises(NotFoundError):
        client.stat(prefix + "nothing")
    client.put_bytes(b"x", prefix + "one")
    with pytest.raises(NotFoundError):
        client.get_bytes(prefix + "one", version=7)


def test_listing_history_diff_and_change_feed(client, prefix):
    names = [f"{prefix}d/{i}" for i in range(5)]
    for name in names:
        client.put_bytes(name.encode(), name)
    files, token = client.list_files(prefix, page_size=2)
    assert [f.path for f in files] == names[:2] and token
    assert [f.path for f in client.iter_files(prefix, page_size=2)] == names

    v1 = client.put_bytes(os.urandom(300_000), prefix + "h").version
    time.sleep(0.01)
    client.put_bytes(os.urandom(300_000), prefix + "h")
    assert [v.version for v in client.list_versions(prefix + "h")] == [2, 1]
    assert client.get_bytes(prefix + "h", as_of_ms=v1.created_ms) == client.get_bytes(prefix + "h", version=1)
    diff = client.diff(prefix + "h")
    assert diff.to.version == 2 and getattr(diff, "from").version == 1 and diff.new_chunks >= 1

    tomb = client.delete(names[0])
    assert tomb.deleted
    with pytest.raises(NotFoundError):
        client.get_bytes(names[0])
    assert client.get_bytes(names[0], version=1) == names[0].encode()  # history is kept
    assert [f.path for f in client.iter_files(prefix + "d/")] == names[1:]

    events, cursor = client.changes(prefix=prefix + "d/")
    assert [(e.kind, e.path) for e in events][-1] == ("delete", names[0])
    assert client.changes(since=cursor, prefix=prefix + "d/")[0] == []

    stream = client.watch(prefix=prefix + "d/", since="0")
    try:
        seen = [next(stream) for _ in range(6)]
    finally:
        stream.close()
    assert [e.path for e in seen] == names + [names[0]]


def test_thin_upload_and_download(client, prefix):
    data = os.urandom(3 * MIB + 5)
    response = client.upload(io.BytesIO(data), prefix + "thin", mode=0o644)
    assert response.version.size == len(data)
    version, pieces = client.download(prefix + "thin")
    assert version.version == 1 and b"".join(pieces) == data
    _, tail = client.download(prefix + "thin", offset=len(data) - 10)
    assert b"".join(tail) == data[-10:]
    # Server-side chunking uses the same parameters: a client upload of the same bytes is unchanged.
    again = client.put_bytes(data, prefix + "thin", mode=0o644)
    assert again.bytes_sent == 0
