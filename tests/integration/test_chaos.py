"""Chaos: one identity sends random hostile messages while another keeps uploading and reading.

A real server process over mTLS with two client identities and no access file, so each owns the
namespace named after it. Several threads of ``mallory`` send random hostile calls (seeded, so a
failure replays): random frames, wrong digests, decompression bombs, oversize chunks, malformed
and missing-chunk manifests, hostile paths, huge page sizes, garbage page tokens, random
``CommitFiles`` batches, requests for ``good``'s namespace and chunks, random bytes as requests.
Meanwhile ``good`` uploads files (some made of the very content mallory lies about) and reads each
back.

Asserted: every hostile call got the status its kind of input is documented to get (or a harmless
OK), never INTERNAL/UNKNOWN; the server never stopped serving and exits 0; every file of ``good``
reads back byte-identical, during and after; ``good``'s namespace holds exactly what ``good``
wrote (files, versions, identities, the change feed) and its earlier records are unchanged.
"""

from __future__ import annotations

import json
import os
import random
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
import zstandard
from api_helpers import put_chunks
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_fixtures import RunningServer, drop_prefix, new_prefix

from cas import codec
from cas.digest import digest
from cli.client import StratusClient
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc
from service.certs import create_dev_pki, grpc_channel_credentials

SEED = 20260412
HOSTILE_THREADS = 4
CALLS_PER_THREAD = 150
TIMEOUT = 30.0
S = grpc.StatusCode
# Whatever the kind of input, a flood may also be refused by a per-identity limit.
ALWAYS_ALLOWED = {S.RESOURCE_EXHAUSTED}
NEVER = {S.INTERNAL, S.UNKNOWN, S.UNAVAILABLE, S.DEADLINE_EXCEEDED, S.CANCELLED}

# Content that good uploads as single-chunk files and mallory knows (and lies about).
POOL = [random.Random(SEED + n).randbytes(1000 + 700 * n) for n in range(12)]
ZEROS = bytes(64 << 20)


@pytest.fixture(scope="module")
def chaos_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("chaos")
    create_dev_pki(root / "pki", clients=["good", "mallory"])
    prefix = new_prefix()
    running = RunningServer(root / "data", redis_url, prefix,
                            extra_args=["--tls-dir", str(root / "pki"), "--audit-log", str(root / "audit.log")])
    running.start()
    running.pki = root / "pki"
    running.audit = root / "audit.log"
    try:
        yield running
    finally:
        running.stop(signal.SIGKILL)
        drop_prefix(redis_url, prefix)


# ---- mallory's repertoire: each builds one hostile call and names the statuses it may get ----------


def _bomb(rng: random.Random) -> bytes:
    payload = bytearray(_zeros_frame())
    variant = rng.randrange(3)
    if variant == 1:  # the zstd header lies too
        payload[6:10] = struct.pack("<I", 1000)
    declared = len(ZEROS) if variant == 0 else 1000
    return struct.pack(">2sBBI", b"SV", 1, 1, declared) + bytes(payload)


_ZEROS_FRAME: list[bytes] = []


def _zeros_frame() -> bytes:
    if not _ZEROS_FRAME:
        _ZEROS_FRAME.append(zstandard.ZstdCompressor(level=3).compress(ZEROS))
    return _ZEROS_FRAME[0]


def _random_frame(rng: random.Random) -> bytes:
    body = rng.randbytes(rng.randrange(0, 3000))
    if rng.random() < 0.5:  # a plausible header in front of garbage
        return struct.pack(">2sBBI", b"SV", 1, rng.randrange(3), rng.randrange(0, 300_000)) + body
    return body


def _put(stub, chunks, metadata=()):  # noqa: ANN001, ANN202
    return put_chunks(stub, chunks, timeout=TIMEOUT, metadata=metadata)


def _manifest(refs: list[tuple[bytes, int]], size: int | None = None, file_digest: bytes | None = None) -> pb.Manifest:
    return pb.Manifest(chunks=[pb.ChunkRef(digest=d, length=n) for d, n in refs],
                       size=sum(n for _, n in refs) if size is None else size,
                       file_digest=file_digest if file_digest is not None else os.urandom(32))


HOSTILE_PATHS = ["", "/abs", "a/../b", "a//b", "./x", "nul\x00byte", "ctl\x07", "x" * 5000, "dir/",
                 "bidi\u202etxt.exe", "zero\u200bwidth", "bom\ufeff", "..", "a/" * 600 + "b"]


def _hostile(rng: random.Random, good_paths: list[str]) -> tuple[str, Callable[[object], object], set]:
    """One random hostile call: (kind, call(stub), statuses it may answer)."""
    kind = rng.choice([
        "random-frames", "wrong-digest", "bomb", "oversize", "bad-digest-length", "malformed-manifest",
        "missing-chunks", "others-chunks-commit", "hostile-path", "huge-page", "garbage-token",
        "commit-files", "others-namespace", "others-chunks-read", "bad-delta", "too-many-digests",
        "valid-known-content", "others-paths", "undecodable",
    ])
    blob = rng.choice(POOL)
    if kind == "random-frames":
        chunks = [(rng.randbytes(32), _random_frame(rng)) for _ in range(rng.randrange(1, 4))]
        return kind, lambda s: _put(s, chunks), {S.INVALID_ARGUMENT, S.DATA_LOSS}
    if kind == "wrong-digest":  # good's digest, other bytes: must never replace good's chunk
        lie = codec.encode(rng.randbytes(len(blob)))
        return kind, lambda s: _put(s, [(digest(blob), lie)]), {S.DATA_LOSS}
    if kind == "bomb":
        frame = _bomb(rng)
        return kind, lambda s: _put(s, [(digest(ZEROS[:1000]), frame)]), set()
    if kind == "oversize":
        big = rng.randbytes(300 * 1024)
        return kind, lambda s: _put(s, [(digest(big), codec.encode(big))]), set()
    if kind == "bad-digest-length":
        digests = [rng.randbytes(rng.choice([0, 1, 31, 33, 64])) for _ in range(3)]
        return kind, lambda s: s.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests),
                                                   timeout=TIMEOUT), {S.INVALID_ARGUMENT}
    if kind == "malformed-manifest":
        refs = [(rng.randbytes(rng.choice([32, 31, 5])), rng.randrange(0, 1 << 32)) for _ in range(rng.randrange(1, 5))]
        request = pb.CommitFileRequest(path=f"m/{rng.randrange(1000)}",
                                       manifest=_manifest(refs, size=rng.randrange(0, 1 << 40)))
        return kind, lambda s: s.CommitFile(request, timeout=TIMEOUT), {S.INVALID_ARGUMENT, S.FAILED_PRECONDITION}
    if kind == "missing-chunks":
        refs = [(rng.randbytes(32), rng.randrange(1, 65536)) for _ in range(rng.randrange(1, 20))]
        request = pb.CommitFileRequest(path=f"m/{rng.randrange(1000)}", manifest=_manifest(refs))
        return kind, lambda s: s.CommitFile(request, timeout=TIMEOUT), {S.FAILED_PRECONDITION}
    if kind == "others-chunks-commit":  # good's chunk, never uploaded by mallory (unless valid-known-content)
        request = pb.CommitFileRequest(path=f"m/{rng.randrange(1000)}",
                                       manifest=_manifest([(digest(blob), len(blob))], file_digest=digest(blob)))
        return kind, lambda s: s.CommitFile(request, timeout=TIMEOUT), {S.FAILED_PRECONDITION, S.OK}
    if kind == "hostile-path":
        path = rng.choice(HOSTILE_PATHS)
        request = pb.CommitFileRequest(path=path, manifest=pb.Manifest(size=0, file_digest=digest(b"")))
        # Names a terminal could misread are refused (or, until then, stay in mallory's namespace).
        return kind, lambda s: s.CommitFile(request, timeout=TIMEOUT), {S.INVALID_ARGUMENT, S.OK}
    if kind == "huge-page":
        request = pb.ListFilesRequest(prefix=rng.choice(["", "m/"]), page_size=rng.choice([1 << 31, (1 << 32) - 1]))
        return kind, lambda s: s.ListFiles(request, timeout=TIMEOUT), {S.OK}
    if kind == "garbage-token":
        token = rng.choice(["%%%", "\x00", "a" * 10_000, rng.randbytes(20).hex(), "////", "-_-_"])
        request = pb.ListFilesRequest(page_token=token)
        return kind, lambda s: s.ListFiles(request, timeout=TIMEOUT), {S.INVALID_ARGUMENT, S.OK}
    if kind == "commit-files":
        entries = []
        for _ in range(rng.randrange(1, 30)):
            refs = [(rng.randbytes(rng.choice([32, 32, 7])), rng.randrange(0, 300_000))
                    for _ in range(rng.randrange(0, 4))]
            entries.append(pb.CommitFileRequest(path=rng.choice([*HOSTILE_PATHS, "m/batch", "m/b2"]),
                                                manifest=_manifest(refs), if_version=rng.randrange(0, 3)))
        request = pb.CommitFilesRequest(files=entries)
        return kind, lambda s: s.CommitFiles(request, timeout=TIMEOUT), {S.OK, S.INVALID_ARGUMENT}
    if kind == "others-namespace":
        header = (("stratus-namespace", "good"),)
        options = [
            lambda s: s.Stat(pb.StatRequest(path=rng.choice(good_paths or ["g/x"])), timeout=TIMEOUT, metadata=header),
            lambda s: s.CommitFile(pb.CommitFileRequest(path="g/evil", manifest=pb.Manifest(
                size=0, file_digest=digest(b""))), timeout=TIMEOUT, metadata=header),
            lambda s: s.Delete(pb.DeleteRequest(path=rng.choice(good_paths or ["g/x"])), timeout=TIMEOUT,
                               metadata=header),
            lambda s: _put(s, [(digest(blob), codec.encode(blob))], metadata=header),
        ]
        return kind, rng.choice(options), {S.PERMISSION_DENIED}
    if kind == "others-chunks-read":
        request = pb.GetChunksRequest(digests=[digest(blob)])
        return kind, lambda s: list(s.GetChunks(request, timeout=TIMEOUT)), {S.NOT_FOUND, S.OK}
    if kind == "bad-delta":
        request = pb.CommitFileRequest(
            path=f"m/{rng.randrange(1000)}",
            manifest=pb.Manifest(size=rng.randrange(1 << 20), file_digest=os.urandom(32)),
            base_manifest_digest=rng.randbytes(rng.choice([32, 3])),
            pieces=[pb.ManifestPiece(copy=pb.ManifestRun(start=rng.randrange(1 << 20), count=rng.randrange(1 << 20)))])
        return kind, lambda s: s.CommitFile(request, timeout=TIMEOUT), {S.NOT_FOUND, S.INVALID_ARGUMENT}
    if kind == "too-many-digests":
        digests = [rng.randbytes(32)] * 100_001
        return kind, lambda s: s.FindMissingChunks(pb.FindMissingChunksRequest(digests=digests),
                                                   timeout=TIMEOUT), set()
    if kind == "valid-known-content":  # mallory stores good's content itself: harmless
        return kind, lambda s: _put(s, [(digest(blob), codec.encode(blob))]), {S.OK}
    if kind == "undecodable":  # raw bytes as the request message(s): whatever parses is ordinary input
        method = rng.choice(UNARY_METHODS + ["PutChunks", "Upload", "GetChunks", "Download"])
        bodies = [rng.randbytes(rng.randrange(1, 200)) for _ in range(rng.randrange(1, 4))]
        return kind, lambda s: _raw(s, method, bodies), {
            S.INVALID_ARGUMENT, S.OK, S.NOT_FOUND, S.FAILED_PRECONDITION, S.DATA_LOSS}
    # others-paths: good's path names, in mallory's own namespace
    path = rng.choice(good_paths or ["g/x"])
    options = [lambda s: s.Stat(pb.StatRequest(path=path), timeout=TIMEOUT),
               lambda s: s.Delete(pb.DeleteRequest(path=path), timeout=TIMEOUT),
               lambda s: s.ListVersions(pb.ListVersionsRequest(path=path), timeout=TIMEOUT)]
    return kind, rng.choice(options), {S.NOT_FOUND, S.OK}


UNARY_METHODS = ["ServerInfo", "FindMissingChunks", "CommitFile", "CommitFiles", "GetManifest", "GetManifests",
                 "Stat", "ListFiles", "ListVersions", "Delete", "Diff", "Changes"]


def _raw(stub: pb_grpc.StratusStub, method: str, bodies: list[bytes]) -> object:
    """Call ``method`` with hand-made request bytes (no serialisation on this side)."""
    channel, name = stub.channel, f"/stratus.v1.Stratus/{method}"
    if method in ("PutChunks", "Upload"):
        return channel.stream_unary(name)(iter(bodies), timeout=TIMEOUT)
    if method in ("GetChunks", "Download"):
        return list(channel.unary_stream(name)(bodies[0], timeout=TIMEOUT))
    return channel.unary_unary(name)(bodies[0], timeout=TIMEOUT)


def _status(call: Callable[[object], object], stub: object) -> grpc.StatusCode:
    try:
        call(stub)
    except grpc.RpcError as exc:
        return exc.code()
    return S.OK


# ---- good's work ---------------------------------------------------------------------------------


def _good_content(rng: random.Random) -> bytes:
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(POOL)  # the content mallory lies about and stores itself
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 50_000))
    if kind == 2:
        return rng.randbytes(rng.randrange(200_000, 1_500_000))  # several chunks
    return b"".join(rng.sample(POOL, 3)) + rng.randbytes(rng.randrange(1, 100))


def _redis_snapshot(server: RunningServer, namespace: str) -> dict[bytes, object]:
    client = redis.Redis.from_url(server.redis_url)
    try:
        out: dict[bytes, object] = {}
        for key in client.scan_iter(match=f"{server.prefix}:{{{namespace}}}:*", count=1000):
            kind = client.type(key)
            out[key] = {b"hash": client.hgetall, b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
                        b"stream": client.xrange}[kind](key)
        return out
    finally:
        client.close()


def _listing(client: StratusClient) -> dict[str, list[tuple[int, str, bool]]]:
    """Every path of the caller's namespace with its versions (number, identity, tombstone)."""
    paths, token = [], ""
    while True:
        page = client.stub.ListFiles(pb.ListFilesRequest(page_token=token, include_deleted=True, page_size=1000))
        paths += [f.path for f in page.files]
        token = page.next_page_token
        if not token:
            break
    return {p: sorted((v.version, v.identity, v.deleted)
                      for v in client.stub.ListVersions(pb.ListVersionsRequest(path=p)).versions) for p in paths}


def test_hostile_identity_cannot_hurt_another(chaos_server):
    server = chaos_server
    good = StratusClient.connect(server.address, tls_dir=server.pki, client_name="good")
    written: dict[tuple[str, int], bytes] = {}
    rng = random.Random(SEED)
    with good:
        assert good.info().namespace == "good"
        for n in range(5):  # before the storm: these records must come through untouched
            data = _good_content(rng)
            written[(f"base/{n}", good.put_bytes(data, f"base/{n}").version.version)] = data
        base_records = {k: v for k, v in _redis_snapshot(server, "good").items() if b":base/" in k}
        assert len(base_records) >= 10  # at least a head and a version hash per file

        good_paths = [p for p, _ in written]
        outcomes: list[tuple[str, grpc.StatusCode, set]] = []
        failures: list[BaseException] = []

        def mallory(thread: int) -> None:
            trng = random.Random(SEED * 100 + thread)
            try:
                credentials = grpc_channel_credentials(server.pki, "mallory")
                with grpc.secure_channel(server.address, credentials) as channel:
                    stub = pb_grpc.StratusStub(channel)
                    stub.channel = channel
                    for _ in range(CALLS_PER_THREAD):
                        kind, call, allowed = _hostile(trng, list(good_paths))
                        outcomes.append((kind, _status(call, stub), allowed))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        storm = [threading.Thread(target=mallory, args=(t,)) for t in range(HOSTILE_THREADS)]
        for t in storm:
            t.start()
        grng = random.Random(SEED + 1)
        rounds = 0
        try:
            while any(t.is_alive() for t in storm) or rounds < 10:
                path = f"loop/{grng.randrange(8)}"
                data = _good_content(grng)
                put = good.put_bytes(data, path)
                written[(path, put.version.version)] = data
                good_paths.append(path)
                assert good.get_bytes(path) == data
                rounds += 1
        finally:
            for t in storm:
                t.join()
        assert not failures, failures

        # every hostile call was refused as documented (or was harmless), none hit a server fault
        assert len(outcomes) == HOSTILE_THREADS * CALLS_PER_THREAD
        wrong = [(kind, code) for kind, code, allowed in outcomes
                 if code in NEVER or code not in allowed | ALWAYS_ALLOWED]
        assert not wrong, wrong
        kinds = {kind for kind, _, _ in outcomes}
        assert len(kinds) >= 15, kinds  # the seed exercises (nearly) the whole repertoire

        # the server is alive and serving, and nothing it logged was a fault
        assert server.proc.poll() is None
        with grpc.secure_channel(server.address, grpc_channel_credentials(server.pki, "good")) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        audit = [json.loads(line) for line in Path(server.audit).read_text().splitlines()]
        assert not [a for a in audit if a["status"] in ("INTERNAL", "UNKNOWN", "ERROR")]

        # every version good wrote reads back byte-identical
        for (path, version), data in written.items():
            assert good.get_bytes(path, version=version) == data, (path, version)

        # good's namespace holds exactly what good wrote; its earlier records are unchanged
        expected: dict[str, list[tuple[int, str, bool]]] = {}
        for path, version in written:
            expected.setdefault(path, []).append((version, "good", False))
        assert _listing(good) == {p: sorted(set(v)) for p, v in expected.items()}
        events, cursor = [], "0"
        while page := good.changes(since=cursor, limit=1000):
            if not page[0]:
                break
            events += page[0]
            cursor = page[1]
        assert sorted((e.path, e.version) for e in events) == sorted(
            {(p, v) for p, vs in expected.items() for v, _, _ in vs})
        after = _redis_snapshot(server, "good")
        assert {k: after.get(k) for k in base_records} == base_records
    assert server.stop() == 0
