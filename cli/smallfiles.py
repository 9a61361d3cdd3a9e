"""Small files of a tree go up in groups: one FindMissingChunks, PutChunks and CommitFiles per group.

Uploading a 1 KiB file on its own costs three round trips, a streaming call and a compression
pool: for a tree of thousands of small files that overhead, not the bytes, sets the pace. Here a
group of small files is read, chunked and hashed in memory, the group's chunks are checked and
sent together, and then the group is committed with one CommitFiles call (the results stay per
file: each is its own version, with its own if-version and signature, and fails on its own).
Larger files take the client's pipelined path (:meth:`cli.client.StratusClient.put_file`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from cas import codec
from cas.chunker import chunk_bytes
from cas.digest import digest as blake3_digest
from cas.errors import MissingChunksError
from cas.manifest import Manifest, ManifestBuilder
from cli.client import StratusClient
from cli.rpc_errors import translate_errors
from cli.statecache import Entry, observe
from cli.tree import LocalFile
from proto import stratus_pb2 as pb

SMALL_FILE_MAX = 1024 * 1024  # files up to this size are grouped
GROUP_FILES = 128
GROUP_BYTES = 8 * 1024 * 1024
_CHUNK_OVERHEAD = 48  # protobuf bytes around one frame in a ChunkBatch


@dataclass
class Prepared:
    """A small file read into memory and cut into chunks."""

    file: LocalFile
    remote: str
    manifest: Manifest
    chunks: list[tuple[bytes, bytes]]  # (digest, data) in file order
    mode: int
    mtime_ns: int


@dataclass
class SmallResult:
    """What happened to one file of a group (``error`` set when it failed)."""

    file: LocalFile
    remote: str
    version: pb.VersionInfo | None = None
    unchanged: bool = False
    bytes_read: int = 0
    bytes_sent: int = 0
    chunks_total: int = 0
    chunks_sent: int = 0
    error: BaseException | None = None
    entry: Entry | None = None


def groups(items: list[tuple[LocalFile, str]]) -> Iterator[list[tuple[LocalFile, str]]]:
    """Split small files into groups of at most GROUP_FILES files and about GROUP_BYTES bytes."""
    group: list[tuple[LocalFile, str]] = []
    size = 0
    for item in items:
        if group and (len(group) >= GROUP_FILES or size + item[0].state.size > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(item)
        size += item[0].state.size
    if group:
        yield group


def _prepare(client: StratusClient, file: LocalFile, remote: str) -> Prepared:
    with open(file.path, "rb") as f:
        st = os.fstat(f.fileno())
        data = f.read(SMALL_FILE_MAX + 1)
    builder = ManifestBuilder()
    chunks = []
    for chunk in chunk_bytes(data, client.params.chunking):
        d = blake3_digest(chunk.data)
        builder.add(d, chunk.length)
        chunks.append((d, chunk.data))
    manifest = builder.build(blake3_digest(data))
    return Prepared(file, remote, manifest, chunks, st.st_mode & 0o777, st.st_mtime_ns)


def _commit_request(p: Prepared, sign_key: object) -> pb.CommitFileRequest:
    request = pb.CommitFileRequest(
        path=p.remote,
        manifest=pb.Manifest(
            chunks=[pb.ChunkRef(digest=c.digest, length=c.length) for c in p.manifest.chunks],
            size=p.manifest.size, file_digest=p.manifest.file_digest,
        ),
        mode=p.mode, mtime_ns=p.mtime_ns,
    )
    if sign_key is not None:
        from cas import signing

        request.signature = signing.sign_version(
            sign_key, p.remote, p.manifest.digest(), p.manifest.file_digest, p.manifest.size  # type: ignore[arg-type]
        )
        request.signer_public_key = signing.public_key_bytes(sign_key)  # type: ignore[arg-type]
    return request


def _batches(frames: list[tuple[bytes, bytes]], limit: int) -> Iterator[pb.ChunkBatch]:
    batch: list[pb.ChunkData] = []
    size = 0
    for d, frame in frames:
        if batch and size + len(frame) + _CHUNK_OVERHEAD > limit:
            yield pb.ChunkBatch(chunks=batch)
            batch, size = [], 0
        batch.append(pb.ChunkData(digest=d, frame=frame))
        size += len(frame) + _CHUNK_OVERHEAD
    if batch:
        yield pb.ChunkBatch(chunks=batch)


def upload_group(
    client: StratusClient, target: str, items: list[tuple[LocalFile, str]], *, sign_key: object = None
) -> list[SmallResult]:
    """Upload a group of small files; failures of single files are returned, not raised.

    Errors that doom every file (the server is gone, the credentials are refused) are raised.
    """
    results: list[SmallResult] = []
    prepared: list[tuple[Prepared, SmallResult]] = []
    for file, remote in items:
        result = SmallResult(file, remote)
        results.append(result)
        try:
            p = _prepare(client, file, remote)
        except OSError as exc:
            result.error = exc
            continue
        if p.manifest.size > SMALL_FILE_MAX:
            result.error = _Grew()
            continue
        result.bytes_read = p.manifest.size
        result.chunks_total = len(p.chunks)
        prepared.append((p, result))
    # Which chunks the server lacks, and which file of the group sends each one first.
    first_owner: dict[bytes, tuple[bytes, SmallResult]] = {}
    for p, result in prepared:
        for d, data in p.chunks:
            first_owner.setdefault(d, (data, result))
    if first_owner:
        with translate_errors(target):
            missing = client.stub.FindMissingChunks(pb.FindMissingChunksRequest(digests=list(first_owner))).missing
        level = client.params.compression_level
        frames = []
        for d in missing:
            data, owner = first_owner[d]
            frame = codec.encode(data, level)
            frames.append((d, frame))
            owner.bytes_sent += len(frame)
            owner.chunks_sent += 1
        if frames:
            with translate_errors(target):
                client.stub.PutChunks(_batches(frames, client.params.batch_bytes))
    answers = client.commit_many([_commit_request(p, sign_key) for p, _ in prepared]) if prepared else []
    for (p, result), answer in zip(prepared, answers, strict=True):
        if isinstance(answer, MissingChunksError):
            # A garbage collection raced the group: the client's full path resends what is needed.
            try:
                retry = client.put_file(p.file.path, p.remote, sign_key=sign_key)
            except Exception as exc:  # noqa: BLE001 - the caller decides what is fatal
                result.error = exc
                continue
            result.version, result.unchanged = retry.version, retry.unchanged
            result.bytes_sent += retry.bytes_sent
            result.chunks_sent += retry.chunks_sent
        elif isinstance(answer, BaseException):
            result.error = answer
            continue
        else:
            result.version, result.unchanged = answer.version, answer.unchanged
        try:
            _, after = observe(p.file.path)
        except OSError:
            continue
        if after.same_file(p.file.state):  # unchanged since the walk: safe to remember
            result.entry = Entry(p.remote, p.file.state, result.version.version, bytes(result.version.manifest_digest))
    return results


class _Grew(OSError):
    """The file grew past the small-file limit after the walk; the caller sends it the normal way."""

    def __init__(self) -> None:
        super().__init__("the file grew while the tree was uploaded; run the upload again")
