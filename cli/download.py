"""The download engine: a big file, a stream and a group of small files go through the same stages.

1. plan: the version's manifest is checked (and its signature, before anything is written:
   :func:`receive`), then the old local copy and a killed download's ``.NAME.svpart`` are indexed
   (:func:`plan_local`); the pure planner (cli/plan.py) says where each chunk comes from.
2. fetch: the missing chunks stream from GetChunks, window after window, on a background thread
   into a bounded queue (cli/fetch.py). A big file is one plan fetched in windows, so memory
   is bounded by the window and the queue, not the file; a group is several plans fetched
   together, in one call as a group is far smaller than a window.
3. verify: every chunk's BLAKE3 (decoded from the server or read from a local file), then each
   file's size and whole-file BLAKE3 before anything replaces its destination.
4. write: a temp file beside the destination, fsynced, given its mode and mtime and renamed over
   it (cli/localfile.py), every step relative to a folder fd opened without following symlinks
   (cli/localdir.py). A stream gets each verified chunk as it comes.

Each file gives one :class:`GetOutcome`. Its version is a :class:`cli.results.Version`, converted
in :func:`receive`: the only place the engine reads a protobuf VersionInfo.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO

from cas.chunker import ChunkParams
from cas.digest import digest as blake3_digest
from cas.digest import new_hasher
from cas.errors import (
    CasError,
    CorruptChunkError,
    IntegrityError,
    InvalidInputError,
    ManifestError,
    NotFoundError,
    SignatureError,
)
from cas.manifest import ChunkRef, Manifest
from cas.manifestpieces import apply_pieces
from cas.paths import normalize_path
from cas.pipeline import Pipeline
from cli.batch import get_manifests
from cli.fetch import CallFailed, Fetcher, fetch_one
from cli.grouping import is_fatal
from cli.localdir import Folder, LocalTarget
from cli.localfile import AtomicFile, index_local_file, read_exact, take_partial, touch_fd, write_all
from cli.plan import BaseRef, OldChunks, Source, Step, fetch_windows, plan_files
from cli.remote import Advance, ProgressFn, Remote, cumulative
from cli.results import Version
from cli.statecache import FileState
from proto import stratus_pb2 as pb
from proto.pieces import pieces_from_message

FETCH_WINDOW_BYTES = 64 * 1024 * 1024  # per GetChunks call; fewer calls, better overlap
FETCH_WINDOW_CHUNKS = 1024
MAX_EXPANDED_CHUNKS = 1 << 24  # a manifest delta from a server that announces no manifest limit
LOCAL_IN_MEMORY = 1024 * 1024  # reusable local bytes up to this are read while planning: a group keeps no file open


@dataclass
class GetOutcome:
    """What a download did to one file: the one result of every download (a file, a stream, a group member).

    ``status`` is ``downloaded`` (written), ``up_to_date`` (the local copy already was this version,
    checked by hashing it; only its mode and mtime were set), ``skipped`` (the state cache vouched for
    it; not even read) or ``failed`` (``error`` says why; nothing was written to the destination).
    ``chunks_reused + chunks_fetched == chunks_total`` for a file written: a chunk is fetched once per
    group or file and reused wherever else it occurs.
    """

    remote: str
    local: str
    status: str
    version: Version | None = None
    size: int = 0
    chunks_total: int = 0
    chunks_reused: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0  # frame bytes received from the server
    chunks_delta: int = 0  # of chunks_fetched, those that came as delta frames against the old copy
    error: BaseException | None = None
    state: FileState | None = None  # the local file as the download left it (from an fstat), for the state cache

    @property
    def up_to_date(self) -> bool:
        """The local file already was this version; nothing was rewritten."""
        return self.status == "up_to_date"


# ---- stage 1: plan -----------------------------------------------------------------------------------


def receive(
    path: str, resp: pb.GetManifestResponse, max_size: int, verify_key: object = None, *, listed: int = 0
) -> tuple[Version, Manifest]:
    """The version and manifest of a GetManifest answer, checked before anything is fetched or written.

    NotFoundError for a deletion; IntegrityError unless the answer is version ``listed`` (when
    given: what a listing named), every chunk fits ``max_size``, the manifest hashes to the version's
    manifest digest and the version's size and file digest agree with it; SignatureError unless
    signed by ``verify_key`` (when given).
    """
    info = resp.version
    if listed and (info.version != listed or info.deleted or not info.manifest_digest):
        raise IntegrityError(f"{path}: the server answered with another version than the one listed")
    if info.deleted:
        raise NotFoundError(f"{path}: version {info.version} is a deletion")
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
    if verify_key is not None:
        verify_signature(path, info, manifest, verify_key)
    return Version.from_message(info), manifest


def fetch_manifest(
    remote: Remote, path: str, version: int | None, as_of_ms: int | None, verify_key: object = None,
    base: Manifest | None = None,
) -> tuple[Version, Manifest]:
    """GetManifest of a version (head, ``version`` or the newest at ``as_of_ms``), checked by :func:`receive`.

    ``base``: a manifest of a version of ``path`` the client holds (its local copy's), offered so the
    server may answer in the delta form (pieces of ``base``), which is expanded here before the check.
    """
    at = pb.VersionSelector(version=version or 0, as_of_ms=as_of_ms or 0)
    request = pb.GetManifestRequest(path=path, at=at, base_manifest_digest=base.digest() if base else b"")
    resp = remote.call(remote.stub.GetManifest, request)
    if resp.base_manifest_digest:
        _expand(path, resp, base, remote.params.max_manifest_chunks or MAX_EXPANDED_CHUNKS)
    return receive(path, resp, remote.params.chunking.max_size, verify_key)


def _expand(path: str, resp: pb.GetManifestResponse, base: Manifest | None, max_chunks: int) -> None:
    """Replace the delta form of ``resp`` by the full chunk list (IntegrityError when it does not fit)."""
    if base is None or resp.base_manifest_digest != base.digest():
        raise IntegrityError(f"{path}: the server answered against a base manifest this client did not offer")
    try:
        chunks = apply_pieces(base.chunks, pieces_from_message(resp.pieces), max_chunks)
    except CasError as exc:
        raise IntegrityError(f"{path}: the server sent an invalid manifest delta: {exc}") from None
    resp.manifest.chunks.extend(pb.ChunkRef(digest=ref.digest, length=ref.length) for ref in chunks)
    resp.ClearField("pieces")


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


@dataclass
class FilePlan:
    """One file of a download: its version and manifest, where it goes, the local chunks it can reuse.

    ``target`` None means the job's writer (a stream). ``local`` maps digests to (offset, length,
    source) in ``sources`` (0: the old copy, 1: a killed download's temp file), each an open fd or
    the reusable ranges read while planning (:class:`LocalExtracts`, same offsets); every chunk taken
    from them is verified by digest first. ``old`` lists the old copy's other chunks: delta bases to
    propose for fetched chunks, verified by digest when read. ``pending`` until the file is written
    or has failed.
    """

    version: Version
    manifest: Manifest
    outcome: GetOutcome
    target: LocalTarget | None = None
    local: dict[bytes, tuple[int, ...]] = field(default_factory=dict)
    sources: list[int | LocalExtracts | None] = field(default_factory=lambda: [None, None])
    old: OldChunks | None = None
    pending: bool = True

    def fail(self, error: BaseException) -> None:
        """Settle the file as failed (nothing of it was written)."""
        o = self.outcome
        o.status, o.error, self.pending = "failed", error, False
        o.chunks_total = o.chunks_reused = o.chunks_fetched = o.bytes_fetched = o.chunks_delta = 0

    def close(self) -> None:
        """Close the local files (idempotent)."""
        for source in self.sources:
            if isinstance(source, int):
                os.close(source)
        self.sources = [None, None]


def plan_local(
    params: ChunkParams, version: Version, manifest: Manifest, target: LocalTarget | None,
    pipeline: Pipeline | None = None, *, bases: bool = False,
) -> FilePlan:
    """Stage 1 for one file: what the old copy at ``target`` and its ``.NAME.svpart`` already hold
    (and, with ``bases``, the old copy's other chunks, to propose as delta bases).

    Both are opened with O_NOFOLLOW relative to the folder's fd, only when they are regular files;
    the temp file's name is removed at once (its fd is read). When the old copy already is this
    version, only its mode and mtime are set (on its fd) and the plan is settled ``up_to_date``. A
    missing folder means nothing to reuse (it is created when the file is written).
    """
    plan = FilePlan(version, manifest, _new_outcome(version, manifest, target), target)
    if target is None:
        return plan
    try:
        folder = target.open_folder(create=False)
    except FileNotFoundError:
        return plan
    try:
        with folder:
            plan.sources[0] = folder.open_regular(target.name)
            plan.sources[1] = take_partial(folder, target.name)
        if bases and plan.sources[0] is not None:
            plan.old = OldChunks()
        _index(plan, params, pipeline)
    except BaseException:
        plan.close()
        raise
    return plan


def _new_outcome(version: Version, manifest: Manifest, target: LocalTarget | None) -> GetOutcome:
    local = str(target.path) if target is not None else "-"
    return GetOutcome(version.path, local, "downloaded", version, version.size, len(manifest.chunks))


def _index(plan: FilePlan, params: ChunkParams, pipeline: Pipeline | None) -> None:
    old, part = plan.sources
    wanted = set(plan.manifest.unique_digests())
    if isinstance(old, int):
        hasher = new_hasher()
        plan.local.update(index_local_file(old, params, wanted, hasher, pipeline, plan.old))
        if os.fstat(old).st_size == plan.manifest.size and hasher.digest() == plan.manifest.file_digest:
            _settle_up_to_date(plan, old)
            return
    if isinstance(part, int):
        found = index_local_file(part, params, wanted - plan.local.keys(), pipeline=pipeline)
        plan.local.update({d: (offset, length, 1) for d, (offset, length) in found.items()})
    if sum(at[1] for at in plan.local.values()) + (plan.old.nbytes if plan.old else 0) <= LOCAL_IN_MEMORY:
        _read_local_chunks(plan)


def _settle_up_to_date(plan: FilePlan, fd: int) -> None:
    """The old copy (open as ``fd``) already is this version: set its mode and mtime on the fd, write nothing."""
    assert plan.target is not None
    observed = time.time_ns()
    st = touch_fd(fd, _mode(plan.version), plan.version.mtime_ns)
    o = plan.outcome
    o.state = FileState.from_stat(os.path.abspath(plan.target.path), st, observed)
    o.status, o.chunks_reused, plan.pending = "up_to_date", o.chunks_total, False
    plan.close()


def _read_local_chunks(plan: FilePlan) -> None:
    """Copy the few reusable local chunks (and delta bases) into memory and close the local files
    (still verified when used). They keep their offsets: planning sees the same file either way."""
    copies = [LocalExtracts(), LocalExtracts()]
    for offset, length, *source in plan.local.values():
        number = source[0] if source else 0
        copies[number].add(offset, _read_source(plan.sources[number], offset, length))
    for ref in plan.old or ():
        copies[0].add(ref.offset, _read_source(plan.sources[0], ref.offset, ref.length))
    plan.close()
    plan.sources = [copies[0], copies[1]]


class LocalExtracts:
    """Byte ranges of a local file held in memory, read back by their offset in the file."""

    def __init__(self) -> None:
        self._ranges: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes | None) -> None:
        """Keep ``data`` (None: the file was shorter, nothing to keep) found at ``offset``."""
        if data is not None:
            self._ranges[offset] = data

    def read(self, offset: int, length: int) -> bytes | None:
        """The ``length`` bytes kept at ``offset``, or None."""
        data = self._ranges.get(offset)
        return data if data is not None and len(data) == length else None


def _base_reader(plans: Sequence[FilePlan]) -> Callable[[int, BaseRef], bytes | None]:
    """``read(file number, base)``: the base's bytes from that plan's old copy, or None when they
    no longer hash to the base's digest (the old copy changed since it was indexed)."""

    def read(number: int, ref: BaseRef) -> bytes | None:
        try:
            data = _read_source(plans[number].sources[0], ref.offset, ref.length)
        except OSError:
            return None
        return data if data is not None and blake3_digest(data) == ref.digest else None

    return read


def _read_source(source: int | LocalExtracts | None, offset: int, length: int) -> bytes | None:
    """``length`` bytes at ``offset`` of a local source; None when it is shorter (it changed)."""
    if isinstance(source, int):
        return read_exact(source, length, offset)
    return source.read(offset, length) if source is not None else None


def _mode(version: Version) -> int | None:
    return (version.mode & 0o777) or None


# ---- stages 3 and 4: verify and write --------------------------------------------------------------------


class _Cursor:
    """Hands out a plan's steps file by file; what a failed file leaves is skipped."""

    def __init__(self, steps: Iterator[Step]) -> None:
        self._steps = steps
        self._next = next(steps, None)

    def file(self, number: int) -> Iterator[Step]:
        """The remaining steps of file ``number``."""
        while self._next is not None and self._next.file == number:
            step, self._next = self._next, next(self._steps, None)
            yield step

    def skip(self, number: int) -> None:
        """Pass over what is left of file ``number``."""
        for _ in self.file(number):
            pass


def _assemble(
    remote: Remote, plan: FilePlan, steps: Iterator[Step], fetcher: Fetcher, sink: BinaryIO | int,
    advance: Advance | None,
) -> None:
    """Write the file's bytes in order to ``sink`` (an fd or a binary writer), each chunk verified, then
    check its size and whole-file BLAKE3. A local chunk that no longer hashes to its digest is fetched."""
    o = plan.outcome
    o.chunks_reused = o.chunks_fetched = o.bytes_fetched = o.chunks_delta = 0
    hasher = new_hasher()
    written = 0
    for step in steps:
        if step.source is Source.FETCH:
            data, frame, was_delta = fetcher.take(step.window, step.digest)
            o.chunks_fetched += frame > 0
            o.chunks_reused += frame == 0
            o.chunks_delta += was_delta
            o.bytes_fetched += frame
        elif step.source is Source.REPEAT:
            assert isinstance(sink, int)
            data = read_exact(sink, step.length, step.source_offset) or b""
            o.chunks_reused += 1
        else:
            data = _read_source(plan.sources[step.source_file], step.source_offset, step.length)
            if data is None or blake3_digest(data) != step.digest:
                data = fetch_one(remote, step.digest)
                o.chunks_fetched += 1
            else:
                o.chunks_reused += 1
        if len(data) != step.length:
            raise CorruptChunkError(step.digest, f"{len(data)} bytes where the manifest says {step.length}")
        hasher.update(data)
        if isinstance(sink, int):
            write_all(sink, data)
        else:
            sink.write(data)
        written += len(data)
        if advance is not None:
            advance(len(data))
    if written != plan.manifest.size:
        raise IntegrityError(f"{o.remote}: assembled {written} bytes, the manifest says {plan.manifest.size}")
    if hasher.digest() != plan.manifest.file_digest:
        raise IntegrityError(f"{o.remote}: the assembled file does not match the manifest's BLAKE3 digest")


def _write_file(
    remote: Remote, plan: FilePlan, steps: Iterator[Step], fetcher: Fetcher, writer: BinaryIO | None,
    advance: Advance | None,
) -> None:
    """Assemble one file into its temp file and rename it in place (or into the writer)."""
    if plan.target is None:
        assert writer is not None
        _assemble(remote, plan, steps, fetcher, writer, advance)
        writer.flush()
    else:
        with plan.target.open_folder() as folder, AtomicFile(plan.target.name, folder) as out:
            _assemble(remote, plan, steps, fetcher, out.fd, advance)
            out.commit(mode=_mode(plan.version), mtime_ns=plan.version.mtime_ns, check=plan.target.guard)
        assert out.stat is not None
        plan.outcome.state = FileState.from_stat(os.path.abspath(plan.target.path), out.stat, out.observed_ns)
    plan.outcome.status, plan.pending = "downloaded", False


def fetch_and_write(
    remote: Remote, plans: Sequence[FilePlan], *, writer: BinaryIO | None = None, advance: Advance | None = None
) -> None:
    """Stages 2 to 4 for the pending ``plans``: fetch their missing chunks together, verify, write.

    A file's own failure (a corrupt chunk, a local error) settles only that file as failed; when the
    GetChunks call of several files fails as a whole, the files it left are retried one by one, so
    the failure lands on the file it belongs to. Fatal failures (cli/grouping.py: server,
    credentials) are raised at once.
    """
    todo = [p for p in plans if p.pending]
    if not todo:
        return
    steps = partial(plan_files, [(p.manifest.chunks, p.local, p.old) for p in todo], repeat_from_output=writer is None,
                    window_bytes=FETCH_WINDOW_BYTES, window_chunks=FETCH_WINDOW_CHUNKS)
    fetcher = Fetcher(remote, fetch_windows(steps()), _base_reader(todo))
    cursor = _Cursor(steps())
    alone: list[FilePlan] = []
    try:
        for number, plan in enumerate(todo):
            try:
                _write_file(remote, plan, cursor.file(number), fetcher, writer, advance)
            except CallFailed as failed:
                if is_fatal(failed.error):
                    raise failed.error from None
                if len(todo) > 1:
                    alone = todo[number:]
                    break
                plan.fail(failed.error)
            except (CasError, OSError) as exc:
                if is_fatal(exc):
                    raise
                plan.fail(exc)
            cursor.skip(number)
    finally:
        fetcher.close()
    for plan in alone:
        fetch_and_write(remote, [plan], advance=advance)


# ---- the three entry points ------------------------------------------------------------------------------


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
    base_manifest: Manifest | None = None,
) -> GetOutcome:
    """Download a version into ``local_path``, reusing the chunks a previous local copy already has.

    ``local_path`` is a path (its parent, named by the caller, may be a symlink and is followed) or
    a :class:`LocalTarget` below an opened destination root, whose folders are entered without
    following symlinks (cli/localdir.py). ``keep`` is given the version's manifest once the file is
    in place (a manifest cache); ``base_manifest`` (the local copy's version's, say) lets the server
    send the manifest as a delta of it. Nothing is written before the manifest (and signature)
    checked out.
    """
    path = normalize_path(remote_path)
    if not isinstance(local_path, LocalTarget) and Path(local_path).is_dir():
        raise InvalidInputError(f"{local_path} is a directory; give the file name to write")
    info, manifest = fetch_manifest(remote, path, version, as_of_ms, verify_key, base_manifest)
    advance = cumulative(progress, info.size)
    if isinstance(local_path, LocalTarget):
        (outcome,) = _get_planned(remote, [(info, manifest, local_path)], advance)
    else:
        dest = Path(local_path)
        with Folder.open_root(dest.parent) as root:
            (outcome,) = _get_planned(remote, [(info, manifest, LocalTarget(root, (), dest.name, dest))], advance)
    if keep is not None and outcome.error is None:
        keep(manifest)
    return _raising(outcome)


def _raising(outcome: GetOutcome) -> GetOutcome:
    """The outcome of a single-file download, whose failure is raised rather than returned."""
    if outcome.error is not None:
        raise outcome.error
    return outcome


def get_files(
    remote: Remote,
    files: Sequence[tuple[Version, LocalTarget]],
    *,
    verify_key: object = None,
    progress: ProgressFn | None = None,
    keep: Callable[[Manifest], None] | None = None,
) -> list[GetOutcome]:
    """Download the listed versions (a group of small files, or one big file) to their targets.

    One GetManifests call pins every file to the version listed; the files then go through the
    stages together. Per-file failures are in the outcomes; fatal ones are raised.
    """
    requests = [pb.GetManifestRequest(path=v.path, at=pb.VersionSelector(version=v.version)) for v, _ in files]
    answers = get_manifests(remote, requests)
    outcomes: list[GetOutcome] = []
    planned = []
    for (listed, target), answer in zip(files, answers, strict=True):
        try:
            if isinstance(answer, CasError):
                raise answer
            version, manifest = receive(listed.path, answer, remote.params.chunking.max_size, verify_key,
                                        listed=listed.version)
        except CasError as exc:
            if is_fatal(exc):
                raise
            outcomes.append(GetOutcome(listed.path, str(target.path), "failed", listed, listed.size, error=exc))
            continue
        planned.append((version, manifest, target))
    advance = cumulative(progress, sum(v.size for v, _ in files))
    got = _get_planned(remote, planned, advance)
    if keep is not None:
        for outcome, (_, manifest, _) in zip(got, planned, strict=True):
            if outcome.status != "failed":
                keep(manifest)
    return outcomes + got


def _get_planned(
    remote: Remote, files: Sequence[tuple[Version, Manifest, LocalTarget]], advance: Advance | None
) -> list[GetOutcome]:
    """Plan each file against its local copy, then fetch and write the ones not already up to date.

    A file that cannot be planned (a symlink where a folder is expected, say) fails alone.
    """
    plans: list[FilePlan] = []
    bases = remote.info().delta_downloads
    try:
        with Pipeline(remote.params.chunking) as pipeline:
            for version, manifest, target in files:
                try:
                    plans.append(plan_local(remote.params.chunking, version, manifest, target, pipeline, bases=bases))
                except (CasError, OSError) as exc:
                    if is_fatal(exc):
                        raise
                    plans.append(FilePlan(version, manifest, _new_outcome(version, manifest, target), target))
                    plans[-1].fail(exc)
                if advance is not None and plans[-1].outcome.up_to_date:
                    advance(version.size)
        fetch_and_write(remote, plans, advance=advance)
    finally:
        for plan in plans:
            plan.close()
    return [p.outcome for p in plans]


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
    info, manifest = fetch_manifest(remote, path, version, as_of_ms, verify_key)
    plan = plan_local(remote.params.chunking, info, manifest, None)
    fetch_and_write(remote, [plan], writer=writer, advance=cumulative(progress, info.size))
    return _raising(plan.outcome)
