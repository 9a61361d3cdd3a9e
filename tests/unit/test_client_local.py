"""Client pieces that need no StratusVault server: download planning, the local chunk index,
atomic replacement and the upload pipeline's failure handling.

The stream-shutdown tests run a small in-process gRPC server over loopback whose PutChunks fails
on purpose; the error contract itself is tested against the real server (test_error_contract.py).
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from cas import codec
from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest, new_hasher
from cas.errors import (
    CorruptChunkError,
    IntegrityError,
    InvalidInputError,
    InvalidPathError,
    ServerUnavailableError,
)
from cas.manifest import ChunkRef
from cli.client import StratusClient, tls_credentials
from cli.fetch import decode_chunk
from cli.localfile import AtomicFile, index_local_file, read_exact
from cli.plan import Source, fetch_windows, plan_steps
from cli.remote import TransferParams
from cli.upload import stream_source
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc


def d(n: int) -> bytes:
    return digest(n.to_bytes(4, "big"))


def refs(*spec: tuple[int, int]) -> list[ChunkRef]:
    return [ChunkRef(d(i), n) for i, n in spec]


# ---- download planning ---------------------------------------------------------------------------


def test_plan_reuses_local_chunks_and_fetches_the_rest():
    chunks = refs((1, 100), (2, 200), (3, 300))
    local = {d(2): (5000, 200)}
    steps = list(plan_steps(chunks, local, repeat_from_output=True, window_bytes=1 << 20, window_chunks=100))
    assert [s.source for s in steps] == [Source.FETCH, Source.LOCAL, Source.FETCH]
    assert [s.offset for s in steps] == [0, 100, 300]
    assert steps[1].source_offset == 5000
    windows = list(fetch_windows(iter(steps)))
    assert len(windows) == 1
    assert windows[0].digests == [d(1), d(3)]
    assert windows[0].nbytes == 400


def test_plan_ignores_local_chunk_with_other_length():
    # Same digest, different length can only mean a corrupt index: never trust it.
    steps = list(plan_steps(refs((1, 100)), {d(1): (0, 99)}, repeat_from_output=True,
                            window_bytes=1 << 20, window_chunks=100))
    assert steps[0].source is Source.FETCH


def test_plan_fetches_a_repeated_chunk_once_when_writing_a_file():
    chunks = refs((1, 100), (2, 100), (1, 100), (1, 100))
    steps = list(plan_steps(chunks, {}, repeat_from_output=True, window_bytes=1 << 20, window_chunks=100))
    assert [s.source for s in steps] == [Source.FETCH, Source.FETCH, Source.REPEAT, Source.REPEAT]
    assert steps[2].source_offset == 0 and steps[3].source_offset == 0
    (window,) = fetch_windows(iter(steps))
    assert window.digests == [d(1), d(2)]
    assert window.uses == {d(1): 1, d(2): 1}


def test_plan_for_a_stream_counts_uses_per_window():
    chunks = refs((1, 100), (1, 100), (2, 100), (1, 100))
    steps = list(plan_steps(chunks, {}, repeat_from_output=False, window_bytes=200, window_chunks=100))
    windows = list(fetch_windows(iter(steps)))
    # Window 0 holds d1 (used twice) and d2; d1 again fits window 0 as it is already there.
    assert [w.digests for w in windows] == [[d(1), d(2)]]
    assert windows[0].uses == {d(1): 3, d(2): 1}
    chunks = refs((1, 100), (2, 100), (3, 100), (1, 100))
    steps = list(plan_steps(chunks, {}, repeat_from_output=False, window_bytes=200, window_chunks=100))
    windows = list(fetch_windows(iter(steps)))
    # d1 reappears after its window closed: fetched again rather than held in memory.
    assert [w.digests for w in windows] == [[d(1), d(2)], [d(3), d(1)]]
    assert [s.window for s in steps] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("window_bytes", "window_chunks", "expected"), [(250, 100, 3), (1 << 20, 2, 3), (1 << 20, 100, 1)]
)
def test_plan_window_limits(window_bytes, window_chunks, expected):
    chunks = refs(*[(i, 100) for i in range(6)])
    steps = plan_steps(
        chunks, {}, repeat_from_output=True, window_bytes=window_bytes, window_chunks=window_chunks
    )
    windows = list(fetch_windows(steps))
    assert len(windows) == expected
    assert [x for w in windows for x in w.digests] == [d(i) for i in range(6)]
    assert all(w.nbytes <= window_bytes and len(w.digests) <= window_chunks for w in windows)


def test_plan_is_deterministic():
    chunks = refs(*[(i % 7, 1000 + i) for i in range(50)])
    local = {d(3): (0, 1003)}
    args = dict(repeat_from_output=False, window_bytes=5000, window_chunks=3)
    assert list(plan_steps(chunks, local, **args)) == list(plan_steps(chunks, local, **args))


# ---- local index and atomic replacement -------------------------------------------------------------


PARAMS = ChunkParams(min_size=1024, avg_size=4096, max_size=16384)


def test_index_local_file_finds_wanted_chunks(tmp_path):
    data = os.urandom(200_000)
    path = tmp_path / "old"
    path.write_bytes(data)
    chunks = list(chunk_bytes(data, PARAMS))
    assert len(chunks) > 5
    wanted = {digest(chunks[1].data), digest(chunks[4].data), d(99)}
    hasher = new_hasher()
    fd = os.open(path, os.O_RDONLY)
    try:
        index = index_local_file(fd, PARAMS, wanted, hasher)
        assert set(index) == {digest(chunks[1].data), digest(chunks[4].data)}
        offset, length = index[digest(chunks[4].data)]
        assert (offset, length) == (chunks[4].offset, chunks[4].length)
        assert read_exact(fd, length, offset) == chunks[4].data
        assert read_exact(fd, 10, len(data) - 5) is None  # short read: the file is shorter
    finally:
        os.close(fd)
    assert hasher.digest() == digest(data)


def test_atomic_file_commit_replaces_and_sets_mode_and_mtime(tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    with AtomicFile(dest) as out:
        os.write(out.fd, b"new content")
        assert dest.read_bytes() == b"old"  # nothing visible before the commit
        out.commit(mode=0o640, mtime_ns=1_600_000_000_123_456_789)
    assert dest.read_bytes() == b"new content"
    st = dest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_atomic_file_keeps_existing_mode_when_none_given(tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(b"old")
    dest.chmod(0o604)
    with AtomicFile(dest) as out:
        out.commit()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o604
    assert dest.read_bytes() == b""


def test_atomic_file_failure_leaves_destination_untouched(tmp_path):
    dest = tmp_path / "f"
    dest.write_bytes(b"precious")
    with pytest.raises(RuntimeError), AtomicFile(dest) as out:
        os.write(out.fd, b"half written")
        raise RuntimeError("verification failed")
    assert dest.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_file_new_file_gets_umask_default(tmp_path):
    dest = tmp_path / "new"
    old = os.umask(0o027)
    try:
        with AtomicFile(dest) as out:
            out.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640


# ---- small pieces ----------------------------------------------------------------------------------


def test_decode_chunk_maps_every_corruption_to_corrupt_chunk_error():
    data = os.urandom(5000)
    frame = codec.encode(data)
    assert decode_chunk(digest(data), frame, 1 << 20) == data
    with pytest.raises(CorruptChunkError):
        decode_chunk(digest(b"other"), frame, 1 << 20)
    with pytest.raises(CorruptChunkError):
        decode_chunk(digest(data), b"XX" + frame[2:], 1 << 20)
    with pytest.raises(CorruptChunkError):
        decode_chunk(digest(data), frame, 100)  # over the size limit


def test_transfer_params_follow_the_server():
    info = pb.ServerInfoResponse(
        chunking=pb.ChunkParams(min_size=4096, avg_size=16384, max_size=65536),
        compression_level=7, max_batch_bytes=8 << 20, max_message_bytes=4 << 20, max_manifest_chunks=10,
    )
    params = TransferParams.from_info(info)
    assert params.chunking == ChunkParams(4096, 16384, 65536)
    assert params.compression_level == 7
    # The suggested batch does not fit the message limit: it is shrunk to fit with a max chunk.
    assert params.batch_bytes + 65536 < 4 << 20
    assert params.max_manifest_chunks == 10


def test_stream_source_rewinds_seekable_streams_only():
    buffer = io.BytesIO(b"0123456789")
    buffer.seek(3)
    source = stream_source(buffer)
    assert source.size == 7
    buffer.read()
    assert source.reopen is not None and source.reopen().read() == b"3456789"
    r, w = os.pipe()
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        assert stream_source(pipe).reopen is None


def test_tls_credentials_name_the_missing_files(tmp_path):
    with pytest.raises(InvalidInputError, match="client-alice.pem"):
        tls_credentials(tmp_path, "alice")
    with pytest.raises(InvalidInputError, match="--tls-dir"):
        StratusClient.connect("127.0.0.1:1")


# ---- upload failure handling, against a scripted gRPC server ----------------------------------------
# (the error mapping is tested against the real server in test_error_contract.py)


PUT_STATE: dict = {}


class ScriptedService(pb_grpc.StratusServicer):
    """Answers ServerInfo normally; PutChunks fails after two batches when told to."""

    def ServerInfo(self, request, context):
        return pb.ServerInfoResponse(
            chunking=pb.ChunkParams(min_size=16384, avg_size=65536, max_size=262144),
            compression_level=1, max_batch_bytes=1 << 20, max_message_bytes=16 << 20,
        )

    def FindMissingChunks(self, request, context):
        return pb.FindMissingChunksResponse(missing=list(dict.fromkeys(request.digests)))

    def PutChunks(self, request_iterator, context):
        PUT_STATE["calls"] = PUT_STATE.get("calls", 0) + 1
        done = PUT_STATE.setdefault("ended", threading.Event())
        try:
            for n, _ in enumerate(request_iterator, 1):
                if n == 2 and PUT_STATE.get("fail"):
                    context.abort(grpc.StatusCode.DATA_LOSS, "chunk digest mismatch (scripted)")
            return pb.PutChunksResponse()
        finally:
            done.set()


@pytest.fixture(scope="module")
def scripted():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="scripted-server"))
    pb_grpc.add_StratusServicer_to_server(ScriptedService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_unreachable_server_says_what_to_check():
    with StratusClient.connect("127.0.0.1:1", insecure=True) as client:
        with pytest.raises(ServerUnavailableError) as info:
            client.info()
    assert "127.0.0.1:1" in str(info.value) and "stratus serve" in str(info.value)


def test_client_validates_remote_path_before_reading(scripted):
    class Exploding(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise AssertionError("the stream must not be read for an invalid path")

    with StratusClient.connect(scripted, insecure=True) as client, pytest.raises(InvalidPathError):
        client.put_stream(io.BufferedReader(Exploding()), "../escape")


def _client_threads() -> int:
    # The scripted server lives in this process too; its pool grows on demand and is not ours.
    return sum(1 for t in threading.enumerate() if not t.name.startswith("scripted-server"))


def _wait_threads(baseline: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while _client_threads() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return _client_threads()


def test_server_failure_mid_stream_raises_and_stops_reading(scripted, tmp_path):
    PUT_STATE.clear()
    PUT_STATE["fail"] = True
    path = tmp_path / "big"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    with StratusClient.connect(scripted, insecure=True) as client:
        client.server_info()
        baseline = _client_threads()
        started = time.monotonic()
        with pytest.raises(IntegrityError, match="scripted"):
            client.put_file(path, "big")
        assert time.monotonic() - started < 30
    assert PUT_STATE["calls"] == 1
    assert _wait_threads(baseline) <= baseline


def test_reader_failure_cancels_the_upload_stream(scripted):
    PUT_STATE.clear()

    class FailingStream(io.RawIOBase):
        def __init__(self):
            self.served = 0

        def readable(self):
            return True

        def readinto(self, b):
            if self.served >= 24 << 20:
                raise OSError("disk read error (scripted)")
            chunk = os.urandom(min(len(b), 1 << 20))
            b[: len(chunk)] = chunk
            self.served += len(chunk)
            return len(chunk)

    with StratusClient.connect(scripted, insecure=True) as client:
        client.server_info()
        baseline = _client_threads()
        with pytest.raises(OSError, match="scripted"):
            client.put_stream(io.BufferedReader(FailingStream()), "broken")
        # The server saw the chunk stream end (cancelled), and no client thread is left behind.
        assert PUT_STATE["ended"].wait(10)
        assert _wait_threads(baseline) <= baseline


def test_get_into_a_directory_is_refused(scripted, tmp_path):
    with StratusClient.connect(scripted, insecure=True) as client, pytest.raises(InvalidInputError):
        client.get_file("a", tmp_path)
    assert list(Path(tmp_path).iterdir()) == []
