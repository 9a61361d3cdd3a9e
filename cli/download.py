"""Delta download: fetch only the chunks the local copy lacks, verify everything, replace atomically.

Flow: GetManifest -> (optional) signature check before anything is written -> index the old local
file (and a killed download's ``.NAME.svpart``) by chunk digest -> walk the manifest in order,
copying reused chunks from those files (each verified by digest first) and taking fetched ones
from a background thread that streams GetChunks -> check size and whole-file BLAKE3 -> fsync,
rename, fsync the folder. Memory stays bounded by a fetch window. Every local step is relative to
a folder fd opened without following symlinks (cli/localdir.py).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import grpc

from cas import codec
from cas.digest import digest as blake3_digest
from cas.digest import new_hasher
from cas.errors import (
    ChunkTooLargeError,
    CorruptChunkError,
    DigestMismatchError,
    IntegrityError,
    InvalidInputError,
    MalformedFrameError,
    ManifestError,
    NotFoundError,
    SignatureError,
)
from cas.manifest import ChunkRef, Manifest
from cas.paths import normalize_path
from cli.localdir import Folder, LocalTarget
from cli.localfile import AtomicFile, index_local_file, read_exact, take_partial, touch_fd, write_all
from cli.plan import FetchWindow, Source, Step, fetch_windows, plan_steps
from cli.remote import ProgressFn, Remote
from cli.rpc_errors import map_rpc_error
from cli.statecache import FileState
from proto import stratus_pb2 as pb

FETCH_WINDOW_BYTES = 64 * 1024 * 1024  # per GetChunks call; fewer calls, better overlap
FETCH_WINDOW_CHUNKS = 1024
_QUEUE_ITEMS = 64  # decoded chunks waiting for the writer: <= 64 * max chunk size
_END = object()


@dataclass
class GetOutcome:
    """What a download did to one file: the one result of every download (a file, a stream, a group member).

    ``status`` is ``downloaded`` (written), ``up_to_date`` (the local copy already was this version,
    checked by hashing it; only its mode and mtime were set), ``skipped`` (the state cache vouched for
    it; not even read) or ``failed`` (``error`` says why; nothing was written to the destination).
    """

    remote: str
    local: str
    status: str
    version: int | None = None
    size: int = 0
    chunks_total: int = 0
    chunks_reused: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0  # frame bytes received from the server
    error: BaseException | None = None
    state: FileState | None = None  # the local file as the download left it (from an fstat), for the state cache

    @property
    def up_to_date(self) -> bool:
        """The local file already was this version; nothing was rewritten."""
        return self.status == "up_to_date"


def decode_chunk(digest: bytes, frame: bytes, max_size: int) -> bytes:
    """Decode a frame from the server and verify its digest; CorruptChunkError on any mismatch."""
    try:
        return codec.decode_verified(digest, frame, max_size)
    except DigestMismatchError as exc:
        raise CorruptChunkError(digest, f"received bytes hash to {exc.actual.hex()}") from None
    except (MalformedFrameError, ChunkTooLargeError) as exc:
        raise CorruptChunkError(digest, str(exc)) from None


def fetch_manifest(
    remote: Remote, path: str, version: int | None, as_of_ms: int | None
) -> tuple[pb.VersionInfo, Manifest]:
    """GetManifest, then check that the manifest is consistent and really is the version's."""
    at = pb.VersionSelector(version=version or 0, as_of_ms=as_of_ms or 0)
    resp = remote.call(remote.stub.GetManifest, pb.GetManifestRequest(path=path, at=at))
    if resp.version.deleted:
        raise NotFoundError(f"{path}: version {resp.version.version} is a deletion")
    return checked_manifest(path, resp, remote.params.chunking.max_size)


def checked_manifest(path: str, resp: pb.GetManifestResponse, max_size: int) -> tuple[pb.VersionInfo, Manifest]:
    """The version and manifest of a GetManifest answer, checked before anything is fetched or written.

    IntegrityError unless every chunk fits ``max_size``, the manifest hashes to the version's
    manifest digest, and the version's size and file digest agree with it.
    """
    info = resp.version
    try:
        refs = []
        for ref in resp.manifest.chunks:
            if ref.length > max_size:
                raise ManifestError(f"chunk of {ref.length} bytes exceeds the server's maximum {max_size}")
            refs.append(ChunkRef(bytes(ref.digest), ref.length))
        manifest = Manifest(tuple(refs), resp.manifest.size, bytes(resp.manifest.file_digest))
    except ManifestError as exc:
        raise IntegrityError(f"{path}: the server sent an invalid manifest: {exc}") from None
    if info.manifest_digest and manifest.digest() != info.manifest_digest:
        raise IntegrityError(f"{path}: the manifest does not match version {info.version}'s manifest digest")
    if (info.file_digest and info.file_digest != manifest.file_digest) or info.size != manifest.size:
        raise IntegrityError(f"{path}: version {info.version} disagrees with its manifest")
    return info, manifest


def verify_signature(path: str, info: pb.VersionInfo, manifest: Manifest, verify_key: object) -> None:
    """Check that the version is signed by ``verify_key``; SignatureError if unsigned or wrong."""
    from cas import signing  # lazily: only signed downloads need cryptography loaded

    key = signing.load_public_key(verify_key)  # type: ignore[arg-type]
    if not info.signature:
        raise SignatureError(f"{path}: version {info.version} is not signed")
    if info.signer_public_key and bytes(info.signer_public_key) != key:
        signer = signing.fingerprint(bytes(info.signer_public_key))
        raise SignatureError(
            f"{path}: version {info.version} is signed by {signer}, not by {signing.fingerprint(key)}"
        )
    signing.verify_version(
        key, bytes(info.signature), path, manifest.digest(), manifest.file_digest, manifest.size
    )


class _Fetcher:
    """Streams the fetch windows of a plan on a background thread into a bounded queue.

    The writer takes chunks by (window, digest); chunks that arrive before they are needed wait
    in a small buffer, so the server may answer a window in any order.
    """

    def __init__(self, remote: Remote, windows: Iterator[FetchWindow]) -> None:
        self._remote = remote
        self._windows = windows
        self._max_size = remote.params.chunking.max_size
        self._queue: queue.Queue = queue.Queue(maxsize=_QUEUE_ITEMS)
        self._stop = threading.Event()
        self._call: grpc.Call | None = None
        self._buffer: dict[tuple[int, bytes], list] = {}
        self.chunks = 0
        self.frame_bytes = 0
        self._thread = threading.Thread(target=self._run, name="stratus-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        workers = min(4, os.cpu_count() or 1)
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="stratus-decode") as pool:
                for window in self._windows:
                    self._fetch_window(window, pool)
            self._put(_END)
        except grpc.RpcError as err:
            if not self._stop.is_set():
                self._put(map_rpc_error(err, self._remote.target))
        except BaseException as exc:  # noqa: BLE001 - handed to the writer thread, which raises it
            self._put(exc)

    def _fetch_window(self, window: FetchWindow, pool: ThreadPoolExecutor) -> None:
        pending = dict(window.uses)
        call = self._remote.stub.GetChunks(pb.GetChunksRequest(digests=window.digests))
        self._call = call
        if self._stop.is_set():
            call.cancel()
            return
        for batch in call:
            seen: set[bytes] = set()
            for c in batch.chunks:
                if c.digest not in pending or c.digest in seen:
                    raise IntegrityError(f"the server sent chunk {c.digest.hex()}, which was not requested")
                seen.add(c.digest)
            # Decoding (zstd + BLAKE3) releases the GIL: spread a batch over the pool.
            datas = pool.map(lambda c: decode_chunk(c.digest, c.frame, self._max_size), batch.chunks)
            for c, data in zip(batch.chunks, datas, strict=True):
                self.chunks += 1
                self.frame_bytes += len(c.frame)
                self._put((window.index, bytes(c.digest), data, pending.pop(c.digest)))
        if pending:
            first = next(iter(pending))
            raise IntegrityError(
                f"the server did not send {len(pending)} requested chunk(s), e.g. {first.hex()}"
            )

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def take(self, window: int, digest: bytes) -> bytes:
        """Return the bytes of ``digest`` from fetch window ``window`` (blocks until they arrive)."""
        key = (window, digest)
        while key not in self._buffer:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is _END:
                raise IntegrityError(f"chunk {digest.hex()} never arrived from the server")
            w, d, data, uses = item
            self._buffer[(w, d)] = [data, uses]
        entry = self._buffer[key]
        entry[1] -= 1
        if entry[1] <= 0:
            del self._buffer[key]
        return entry[0]

    def close(self) -> None:
        """Stop the background thread (cancelling an in-flight GetChunks)."""
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        self._thread.join(timeout=10)


def _fetch_one(remote: Remote, digest: bytes) -> bytes:
    """Fetch a single chunk synchronously (used when a local copy turned out to have changed)."""
    max_size = remote.params.chunking.max_size
    try:
        for batch in remote.stub.GetChunks(pb.GetChunksRequest(digests=[digest])):
            for c in batch.chunks:
                if c.digest == digest:
                    return decode_chunk(digest, c.frame, max_size)
    except grpc.RpcError as err:
        raise map_rpc_error(err, remote.target) from err
    raise IntegrityError(f"the server did not send chunk {digest.hex()}")


@dataclass
class _Counts:
    reused: int = 0
    fetched: int = 0
    extra_fetch_bytes: int = 0


def _assemble(
    remote: Remote,
    manifest: Manifest,
    steps: Iterator[Step],
    windows: Iterator[FetchWindow],
    sink: BinaryIO | int,
    sources: list[int | None],
    progress: ProgressFn | None,
) -> tuple[_Counts, _Fetcher]:
    """Write the file's bytes in order to ``sink`` (an fd or a binary writer), verifying the result.

    ``sources`` are the local files LOCAL steps read from (by ``Step.source_file``); a chunk read
    there that does not hash to its digest any more is fetched instead.
    """
    counts = _Counts()
    hasher = new_hasher()
    written = 0
    fetcher = _Fetcher(remote, windows)
    try:
        for step in steps:
            if step.source is Source.FETCH:
                data = fetcher.take(step.window, step.digest)
            elif step.source is Source.REPEAT:
                assert isinstance(sink, int)
                data = read_exact(sink, step.length, step.source_offset) or b""
                counts.reused += 1
            else:
                source = sources[step.source_file]
                assert source is not None
                data = read_exact(source, step.length, step.source_offset)
                if data is None or blake3_digest(data) != step.digest:
                    # The old file changed since it was indexed: fetch this chunk instead.
                    data = _fetch_one(remote, step.digest)
                    counts.fetched += 1
                else:
                    counts.reused += 1
            if len(data) != step.length:
                detail = f"{len(data)} bytes where the manifest says {step.length}"
                raise CorruptChunkError(step.digest, detail)
            hasher.update(data)
            if isinstance(sink, int):
                write_all(sink, data)
            else:
                sink.write(data)
            written += len(data)
            if progress is not None:
                progress(written, manifest.size)
    finally:
        fetcher.close()
    if written != manifest.size:
        raise IntegrityError(f"assembled {written} bytes, the manifest says {manifest.size}")
    if hasher.digest() != manifest.file_digest:
        raise IntegrityError("the assembled file does not match the manifest's BLAKE3 digest")
    counts.fetched += fetcher.chunks
    return counts, fetcher


def _plan(manifest: Manifest, local: dict[bytes, tuple[int, ...]], repeat: bool) -> Iterator[Step]:
    return plan_steps(
        manifest.chunks, local, repeat_from_output=repeat,
        window_bytes=FETCH_WINDOW_BYTES, window_chunks=FETCH_WINDOW_CHUNKS,
    )


def get_file(
    remote: Remote,
    remote_path: str,
    local_path: str | Path | LocalTarget,
    *,
    version: int | None = None,
    as_of_ms: int | None = None,
    verify_key: object = None,
    progress: ProgressFn | None = None,
    keep: Callable[[Manifest], None] | None = None,
) -> GetOutcome:
    """Download a version into ``local_path``, reusing the chunks a previous local copy already has.

    ``local_path`` is a path (its parent, named by the caller, may be a symlink and is followed) or
    a :class:`LocalTarget` below an opened destination root, whose folders are entered without
    following symlinks (cli/localdir.py). ``keep`` is given the version's manifest once the file is
    in place (a manifest cache). Nothing is written before the manifest (and signature) checked out.
    """
    path = normalize_path(remote_path)
    if not isinstance(local_path, LocalTarget) and Path(local_path).is_dir():
        raise InvalidInputError(f"{local_path} is a directory; give the file name to write")
    info, manifest = fetch_manifest(remote, path, version, as_of_ms)
    if verify_key is not None:
        verify_signature(path, info, manifest, verify_key)
    if isinstance(local_path, LocalTarget):
        with local_path.open_folder() as folder:
            result = _get_into(remote, folder, local_path, info, manifest, progress)
    else:
        dest = Path(local_path)
        with Folder.open_root(dest.parent) as root:
            target = LocalTarget(root, (), dest.name, dest)
            result = _get_into(remote, root, target, info, manifest, progress)
    if keep is not None:
        keep(manifest)
    return result


def _get_into(
    remote: Remote, folder: Folder, target: LocalTarget, info: pb.VersionInfo, manifest: Manifest,
    progress: ProgressFn | None,
) -> GetOutcome:
    """Write the version as ``target.name`` in ``folder``; the old copy and a partial temp file are sources.

    The old copy and ``.NAME.svpart`` are opened with O_NOFOLLOW relative to the folder fd and only
    if they are regular files; every chunk taken from them is verified by digest before it is used.
    """
    old_fd = folder.open_regular(target.name)
    part_fd = take_partial(folder, target.name)
    mode = (info.mode & 0o777) or None
    n = len(manifest.chunks)
    outcome = GetOutcome(info.path, str(target.path), "downloaded", info.version, info.size, chunks_total=n)
    try:
        local: dict[bytes, tuple[int, ...]] = {}
        wanted = set(manifest.unique_digests())
        if old_fd is not None:
            old_hasher = new_hasher()
            local.update(index_local_file(old_fd, remote.params.chunking, wanted, old_hasher))
            if os.fstat(old_fd).st_size == manifest.size and old_hasher.digest() == manifest.file_digest:
                state = _touch(old_fd, target, mode, info.mtime_ns)
                if progress is not None:
                    progress(manifest.size, manifest.size)
                outcome.status, outcome.chunks_reused, outcome.state = "up_to_date", n, state
                return outcome
        if part_fd is not None:
            part = index_local_file(part_fd, remote.params.chunking, wanted - local.keys())
            local.update({d: (offset, length, 1) for d, (offset, length) in part.items()})
        with AtomicFile(target.name, folder) as out:
            steps = partial(_plan, manifest, local, True)
            counts, fetcher = _assemble(
                remote, manifest, steps(), fetch_windows(steps()), out.fd, [old_fd, part_fd], progress,
            )
            out.commit(mode=mode, mtime_ns=info.mtime_ns)
        assert out.stat is not None
        outcome.state = FileState.from_stat(os.path.abspath(target.path), out.stat, out.observed_ns)
    finally:
        for fd in (old_fd, part_fd):
            if fd is not None:
                os.close(fd)
    outcome.chunks_reused, outcome.chunks_fetched = counts.reused, counts.fetched
    outcome.bytes_fetched = fetcher.frame_bytes
    return outcome


def _touch(fd: int, target: LocalTarget, mode: int | None, mtime_ns: int) -> FileState:
    """Give the (already right) open file ``fd`` its mode and mtime, on the fd itself; its new state."""
    observed = time.time_ns()
    return FileState.from_stat(os.path.abspath(target.path), touch_fd(fd, mode, mtime_ns), observed)


def get_stream(
    remote: Remote,
    remote_path: str,
    writer: BinaryIO,
    *,
    version: int | None = None,
    as_of_ms: int | None = None,
    verify_key: object = None,
    progress: ProgressFn | None = None,
) -> GetOutcome:
    """Download a version into a binary writer (e.g. stdout), verifying every chunk before writing it.

    A writer cannot be rolled back: a whole-file mismatch found at the end raises after the bytes
    were written (every chunk was verified on its own before that, so this needs a lying server).
    """
    path = normalize_path(remote_path)
    info, manifest = fetch_manifest(remote, path, version, as_of_ms)
    if verify_key is not None:
        verify_signature(path, info, manifest, verify_key)
    counts, fetcher = _assemble(
        remote, manifest, _plan(manifest, {}, False), fetch_windows(_plan(manifest, {}, False)),
        writer, [], progress,
    )
    writer.flush()
    return GetOutcome(path, "-", "downloaded", info.version, info.size, len(manifest.chunks), counts.reused,
                      counts.fetched, fetcher.frame_bytes)
