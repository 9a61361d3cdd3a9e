"""The download engine used directly as a library (no command line): one file, a stream and a tree
of small and large files go through the same stages and give the same outcome and report types."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from cli_helpers import MIB, ROOT, write_random
from stored_chunks import flip_chunk

from cas.chunker import chunk_bytes
from cas.digest import digest, new_hasher
from cas.errors import IntegrityError, NotFoundError
from cas.manifest import ChunkRef
from cli import download
from cli.client import StratusClient
from cli.download import GetOutcome
from cli.localdir import UnsafeLocalPathError
from cli.plan import Source, fetch_windows, plan_files
from cli.restore import Downloader, GetOptions, GetReport, ProgressEvent
from cli.results import Version
from cli.statecache import StateCache


@pytest.fixture
def cache(tmp_path):
    c = StateCache(tmp_path / "cache")
    yield c
    c.close()


def engine(client, cache, events=None, **kw) -> Downloader:
    return Downloader(client, cache, GetOptions("test-server", progress=events.append if events is not None else None,
                                                **kw))


def test_engine_imports_no_command_line_libraries():
    import subprocess

    code = ("import sys, cli.restore; bad = [m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', "
            "'click')]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_tree_file_and_stream_share_one_outcome_type(client, cache, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(30):
        (src / "small").mkdir(parents=True, exist_ok=True)
        (src / "small" / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    write_random(src / "big.bin", 3 * MIB)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            client.put_file(path, prefix + path.relative_to(src).as_posix())
    events: list[ProgressEvent] = []
    eng = engine(client, cache, events)

    tree = eng.get_tree(prefix, tmp_path / "out", as_of_ms=None)
    assert isinstance(tree, GetReport) and all(isinstance(o, GetOutcome) for o in tree.outcomes)
    assert tree.stats.files_downloaded == 31 and tree.stats.files_failed == 0 and tree.first_error is None
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert all(o.state is not None for o in tree.outcomes)  # each written file's state, for the cache
    starts = [e for e in events if e.kind == "start"]
    assert len(starts) == 1 and starts[0].files == 31 and starts[0].nbytes == tree.stats.bytes_total
    assert sum(e.nbytes for e in events if e.kind == "bytes") == tree.stats.bytes_total
    assert sum(e.kind == "file" for e in events) == 31

    again = eng.get_tree(prefix, tmp_path / "out", as_of_ms=None)  # the state cache vouches for them now
    assert again.stats.files_downloaded == 0
    assert again.stats.files_skipped_unchanged + again.stats.files_up_to_date == 31

    info = client.stat(prefix + "big.bin")
    one = eng.get_file(info, tmp_path / "copy.bin")
    assert one.kind == "file" and one.outcomes[0].status == "downloaded"
    assert (tmp_path / "copy.bin").read_bytes() == (src / "big.bin").read_bytes()
    located = eng.locate(prefix + "big.bin", version=None, as_of_ms=None)
    time.sleep(0.2)  # past the racy window of the copy's ctime (cli/statecache.py), so the next check is trusted
    checked = eng.get_file(located, tmp_path / "copy.bin")  # hashed: its state is recorded as trusted
    skipped = eng.get_file(located, tmp_path / "copy.bin")  # the state cache vouches for it now
    assert [o.status for o in (*checked.outcomes, *skipped.outcomes)] == ["up_to_date", "skipped"]
    for o in (*tree.outcomes, *one.outcomes, *checked.outcomes, *skipped.outcomes):  # never protobuf
        assert isinstance(o.version, Version) and o.version.path == o.remote and o.version.size == o.size

    sink = io.BytesIO()
    streamed = eng.get_stream(prefix + "big.bin", sink, version=None, as_of_ms=None)
    assert streamed.kind == "stdout" and sink.getvalue() == (src / "big.bin").read_bytes()
    assert streamed.outcomes[0].chunks_fetched == streamed.outcomes[0].chunks_total > 1


def test_per_file_failures_carry_the_typed_error(client, cache, prefix, tmp_path):
    client.put_bytes(b"inside", prefix + "sub/a.txt")
    client.put_bytes(b"top", prefix + "top.txt")
    dst = tmp_path / "dst"
    dst.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst / "sub").symlink_to(outside)
    report = engine(client, cache).get_tree(prefix, dst, as_of_ms=None)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.remote for o in failed] == [prefix + "sub/a.txt"]
    assert isinstance(report.first_error, UnsafeLocalPathError)
    assert list(outside.iterdir()) == [] and (dst / "top.txt").read_bytes() == b"top"


def test_missing_path_and_signature_errors_are_raised(client, cache, prefix, tmp_path):
    from cas import signing

    eng = engine(client, cache)
    with pytest.raises(NotFoundError):
        eng.locate(prefix + "nothing", version=None, as_of_ms=None)
    client.put_bytes(b"unsigned", prefix + "u")
    pair = signing.generate_key()
    signed = engine(client, cache, verify_key=pair.public_key)
    with pytest.raises(IntegrityError):
        signed.get_file(client.stat(prefix + "u"), tmp_path / "never")
    assert not (tmp_path / "never").exists()


# ---- one engine: the same stages for a big file and a group of small files -------------------------------


class CallCounter(grpc.UnaryStreamClientInterceptor):
    """Records the digests asked for by every GetChunks call of a channel (observes, changes nothing)."""

    def __init__(self) -> None:
        self.get_chunks: list[int] = []

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        if details.method.endswith("/GetChunks"):
            self.get_chunks.append(len(request.digests))
        return continuation(details, request)


@pytest.fixture
def counted(server):
    counter = CallCounter()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), counter)
    with StratusClient(channel, target=server.address) as c:
        yield c, counter


def unique_digests(client: StratusClient, blobs) -> set[bytes]:
    return {digest(c.data) for blob in blobs for c in chunk_bytes(blob, client.params.chunking)}


def test_plan_of_several_files_shares_windows_and_fetches_a_shared_chunk_once():
    def ref(n: int, size: int = 100) -> ChunkRef:
        return ChunkRef(digest(n.to_bytes(4, "big")), size)

    files = [([ref(1), ref(2)], {}), ([ref(2), ref(3)], {ref(3).digest: (0, 100)}), ([ref(1), ref(1)], {})]
    steps = list(plan_files(files, repeat_from_output=True, window_bytes=1 << 20, window_chunks=100))
    assert [(s.file, s.source) for s in steps] == [
        (0, Source.FETCH), (0, Source.FETCH), (1, Source.FETCH), (1, Source.LOCAL), (2, Source.FETCH),
        (2, Source.REPEAT)]
    (window,) = fetch_windows(iter(steps))  # the whole group: one GetChunks call
    assert window.digests == [ref(1).digest, ref(2).digest]
    assert window.uses == {ref(1).digest: 2, ref(2).digest: 2}
    small = list(plan_files(files, repeat_from_output=True, window_bytes=150, window_chunks=100))
    assert [w.digests for w in fetch_windows(iter(small))] == [[ref(1).digest], [ref(2).digest], [ref(1).digest]]


def test_tree_with_shared_content_fetches_each_chunk_once_per_group(counted, cache, prefix, tmp_path, monkeypatch):
    client, counter = counted
    shared = os.urandom(150_000)  # several chunks, in 20 files
    blobs = {f"copies/c{i:02d}.bin": shared for i in range(20)}
    blobs |= {f"own/u{i:02d}.txt": os.urandom(2_000 + i) for i in range(20)}
    for name, data in blobs.items():
        client.put_bytes(data, prefix + name)
    big = write_random(tmp_path / "big.bin", 3 * MIB)
    client.put_file(big, prefix + "big.bin")
    small_chunks = unique_digests(client, blobs.values())
    big_chunks = unique_digests(client, [big.read_bytes()])
    monkeypatch.setattr(download, "FETCH_WINDOW_BYTES", MIB)  # the big file now needs several windows

    report = engine(client, cache, use_cache=False).get_tree(prefix, tmp_path / "out", as_of_ms=None)
    s = report.stats
    assert s.files_downloaded == 41 and s.files_failed == 0
    for name, data in blobs.items():
        assert (tmp_path / "out" / name).read_bytes() == data
    assert (tmp_path / "out" / "big.bin").read_bytes() == big.read_bytes()
    # Each distinct chunk came over the wire once: the 20 copies cost one copy's chunks.
    assert s.chunks_fetched == len(small_chunks) + len(big_chunks)
    assert s.chunks_fetched + s.chunks_reused == s.chunks_total
    assert s.bytes_fetched < len(shared) + sum(map(len, blobs.values())) // 20 + big.stat().st_size + MIB
    for o in report.outcomes:
        assert o.chunks_fetched + o.chunks_reused == o.chunks_total and isinstance(o.version, Version)
    # The group of 40 small files: one GetChunks call for all of them; the big file: one per window.
    group_calls = [n for n in counter.get_chunks if n == len(small_chunks)]
    assert len(group_calls) == 1
    assert len(counter.get_chunks) >= 1 + 3 and sum(counter.get_chunks) == s.chunks_fetched

    # Again over the same tree: every file is up to date, read and hashed, nothing fetched.
    counter.get_chunks.clear()
    again = engine(client, cache, use_cache=False).get_tree(prefix, tmp_path / "out", as_of_ms=None)
    assert again.stats.files_up_to_date == 41 and again.stats.bytes_fetched == 0 and counter.get_chunks == []


@pytest.mark.parametrize("damage", ["payload", "header"])
def test_corrupt_chunk_in_a_group_fails_only_its_file(client, cache, server, prefix, tmp_path, damage):
    # below the minimum chunk size (16 KiB): each file is exactly one chunk
    blobs = {f"g/f{i:02d}.bin": os.urandom(12_000 + i) for i in range(12)}
    for name, data in blobs.items():
        client.put_bytes(data, prefix + name)
    victim = "g/f05.bin"
    (chunk,) = chunk_bytes(blobs[victim], client.params.chunking)
    # payload: in the files layout the server sends the frame and the client's check fails (that
    # chunk alone); header, or any damage in a pack (each record has a checksum): the server's own
    # check fails the whole GetChunks call, and each file is then tried alone.
    flip_chunk(server.data_dir, digest(chunk.data), at=-20 if damage == "payload" else 0)
    out = tmp_path / "out"
    (out / "g").mkdir(parents=True)
    (out / victim).write_bytes(b"precious local data")

    report = engine(client, cache).get_tree(prefix, out, as_of_ms=None)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.remote for o in failed] == [prefix + victim]
    assert isinstance(failed[0].error, IntegrityError) and isinstance(report.first_error, IntegrityError)
    assert report.stats.files_downloaded == 11 and report.stats.files_failed == 1
    assert (out / victim).read_bytes() == b"precious local data"
    for name, data in blobs.items():
        if name != victim:
            assert (out / name).read_bytes() == data
    assert not [p for p in out.rglob("*") if p.name.endswith(".svpart")]


BOUNDED_GET = """
import json, sys
from cli.client import StratusClient
from cli.download import FETCH_WINDOW_BYTES
from cli.restore import Downloader, GetOptions
from cli.statecache import StateCache

def status_mib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) >> 10

server, prefix, out, cache = sys.argv[1:5]
with StratusClient.connect(server, insecure=True) as c:
    eng = Downloader(c, StateCache(cache), GetOptions("bounded", use_cache=False))
    eng.get_tree(prefix + "warm/", out + "/warm", as_of_ms=None)  # interpreter, gRPC, thread pools
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak (VmHWM) starts again from here
    base = status_mib("VmRSS")
    report = eng.get_tree(prefix + "big/", out + "/big", as_of_ms=None)
print(json.dumps({"base_mib": base, "growth_mib": status_mib("VmHWM") - base, "window_mib": FETCH_WINDOW_BYTES >> 20,
                  "fetched": report.stats.chunks_fetched, "files": report.stats.files_downloaded}))
"""


def file_digest(path) -> bytes:
    hasher = new_hasher()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            hasher.update(block)
    return hasher.digest()


@pytest.mark.slow
def test_memory_stays_bounded_for_a_200_mib_file(client, prefix, tmp_path):
    size = 200 * MIB
    big = write_random(tmp_path / "big.bin", size)
    client.put_file(big, prefix + "big/big.bin")
    for i in range(3):
        client.put_bytes(os.urandom(300_000), prefix + f"big/s{i}.bin")  # a group beside the big file
        client.put_bytes(os.urandom(300_000), prefix + f"warm/w{i}.bin")
    client.put_bytes(os.urandom(2 * MIB), prefix + "warm/large.bin")
    args = [sys.executable, "-c", BOUNDED_GET, client.remote.target, prefix, str(tmp_path / "out"),
            str(tmp_path / "cache")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    print(f"peak RSS growth restoring a {size >> 20} MiB file: {result['growth_mib']} MiB over "
          f"{result['base_mib']} MiB after a warm-up restore (fetch window {result['window_mib']} MiB)")
    assert result["files"] == 4 and result["fetched"] > 0
    assert (tmp_path / "out" / "big" / "big.bin").stat().st_size == size
    assert file_digest(tmp_path / "out" / "big" / "big.bin") == file_digest(big)
    # The file streams window by window through a bounded queue: the peak grows by a fixed cost of
    # the window and queue, independent of the file's size (a buffered third of it would fail).
    assert result["growth_mib"] < 64, result
