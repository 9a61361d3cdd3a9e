"""Small files of a restore come down in groups: one GetManifests and one GetChunks call per group.

The mirror of :mod:`cli.smallfiles`. One GetManifests call asks for every file of the group, each
pinned to the version the listing named; each file's manifest and signature are checked exactly
as the client's download checks them, every chunk is verified, the whole-file BLAKE3 is checked,
and each file is written through a temp file that is fsynced and renamed with its mode and mtime,
every local operation relative to a folder fd opened without following symlinks
(cli/localdir.py). Chunks an existing local copy (or a killed download's temp file) already has
are reused. Each file gives one :class:`cli.download.GetOutcome`. If the group's GetChunks fails
(a corrupt chunk on the server, say), every file of the group is retried alone through
:meth:`cli.client.StratusClient.get_file`, so the failure lands on the file it belongs to.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from cas.chunker import ChunkParams, chunk_bytes
from cas.digest import digest as blake3_digest
from cas.errors import CasError, IntegrityError
from cas.manifest import Manifest
from cli.client import StratusClient
from cli.download import GetOutcome, checked_manifest, decode_chunk, verify_signature
from cli.grouping import SMALL_FILE_MAX
from cli.localdir import Folder, LocalTarget
from cli.localfile import AtomicFile, take_partial, touch_fd, write_all
from cli.rpc_errors import translate_errors
from cli.statecache import FileState
from cli.tree import RestoreItem
from proto import stratus_pb2 as pb


@dataclass
class _Plan:
    result: GetOutcome
    target: LocalTarget
    info: pb.VersionInfo
    manifest: Manifest
    local: dict[bytes, bytes] = field(default_factory=dict)  # reusable chunks of the old local copy


def _manifest(
    client: StratusClient, item: RestoreItem, resp: pb.GetManifestResponse
) -> tuple[pb.VersionInfo, Manifest]:
    """Check that the server's answer is the version the listing named, and a sound manifest."""
    path = item.info.path
    if resp.version.deleted or resp.version.version != item.info.version or not resp.version.manifest_digest:
        raise IntegrityError(f"{path}: the server answered with another version than the one listed")
    return checked_manifest(path, resp, client.params.chunking.max_size)


def _read(fd: int | None) -> bytes | None:
    """The whole content of an open regular file; None when absent or too big to be a small file's copy."""
    if fd is None:
        return None
    try:
        size = os.fstat(fd).st_size
        return None if size > 4 * SMALL_FILE_MAX else os.pread(fd, size + 1, 0)
    except OSError:
        return None


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _index(plan: _Plan, data: bytes | None, params: ChunkParams) -> None:
    """Keep the chunks of ``data`` (an old copy or a partial temp file) that the manifest names."""
    if not data:
        return
    wanted = {c.digest for c in plan.manifest.chunks}
    for chunk in chunk_bytes(data, params):
        d = blake3_digest(chunk.data)
        if d in wanted:
            plan.local.setdefault(d, chunk.data)


def _plan(
    client: StratusClient, item: RestoreItem, target: LocalTarget, answer: pb.GetManifestResponse | CasError,
    verify_key: object,
) -> _Plan:
    """Checks of a GetManifests answer; ``result.up_to_date`` when the local copy already is that version.

    The old copy and a killed download's ``.NAME.svpart`` are read through the folder's fd, never
    through a symlink; the temp file is removed here (its chunks are kept in memory).
    """
    if isinstance(answer, CasError):
        raise answer
    info, manifest = _manifest(client, item, answer)
    if verify_key is not None:
        verify_signature(info.path, info, manifest, verify_key)
    plan = _Plan(_outcome(item, "downloaded", chunks_total=len(manifest.chunks)), target, info, manifest)
    try:
        folder = target.open_folder(create=False)
    except FileNotFoundError:
        return plan
    with folder:
        part_fd = take_partial(folder, target.name)
        part = _read(part_fd)
        _close(part_fd)
        old_fd = folder.open_regular(target.name)
        try:
            old = _read(old_fd)
            if old is not None and len(old) == manifest.size and blake3_digest(old) == manifest.file_digest:
                assert old_fd is not None
                observed = time.time_ns()
                st = touch_fd(old_fd, (info.mode & 0o777) or None, info.mtime_ns)
                plan.result.status = "up_to_date"
                plan.result.chunks_reused = len(manifest.chunks)
                plan.result.state = FileState.from_stat(os.path.abspath(target.path), st, observed)
                return plan
        finally:
            _close(old_fd)
    _index(plan, old, client.params.chunking)
    _index(plan, part, client.params.chunking)
    return plan


def _fetch(client: StratusClient, target: str, plans: list[_Plan]) -> dict[bytes, bytes]:
    owners: dict[bytes, GetOutcome] = {}
    for p in plans:
        for ref in p.manifest.chunks:
            if ref.digest not in p.local:
                owners.setdefault(ref.digest, p.result)
    fetched: dict[bytes, bytes] = {}
    if not owners:
        return fetched
    max_size = client.params.chunking.max_size
    with translate_errors(target):
        for batch in client.stub.GetChunks(pb.GetChunksRequest(digests=list(owners))):
            for c in batch.chunks:
                owner = owners.get(bytes(c.digest))
                if owner is None:
                    raise IntegrityError(f"the server sent chunk {bytes(c.digest).hex()}, which was not requested")
                fetched[bytes(c.digest)] = decode_chunk(bytes(c.digest), c.frame, max_size)
                owner.bytes_fetched += len(c.frame)
                owner.chunks_fetched += 1
    if len(fetched) != len(owners):
        raise IntegrityError(f"the server did not send {len(owners) - len(fetched)} requested chunk(s)")
    return fetched


def _write(p: _Plan, fetched: dict[bytes, bytes]) -> None:
    """Assemble, verify the whole-file BLAKE3, then write through a temp file renamed in place."""
    parts = []
    for ref in p.manifest.chunks:
        data = p.local.get(ref.digest)
        if data is not None:
            p.result.chunks_reused += 1
        else:
            data = fetched[ref.digest]
        parts.append(data)
    content = b"".join(parts)
    if len(content) != p.manifest.size or blake3_digest(content) != p.manifest.file_digest:
        raise IntegrityError(f"{p.info.path}: the assembled file does not match its BLAKE3 digest")
    with p.target.open_folder() as folder, AtomicFile(p.target.name, folder) as out:
        write_all(out.fd, content)
        out.commit(mode=(p.info.mode & 0o777) or None, mtime_ns=p.info.mtime_ns)
    assert out.stat is not None
    p.result.state = FileState.from_stat(os.path.abspath(p.target.path), out.stat, out.observed_ns)


def download_group(
    client: StratusClient, target: str, items: list[RestoreItem], root: Folder, *, verify_key: object = None
) -> list[GetOutcome]:
    """Restore a group of small files below ``root``; per-file failures are returned, fatal ones raised."""
    results: list[GetOutcome] = []
    plans: list[_Plan] = []
    answers = client.get_manifests(
        [pb.GetManifestRequest(path=i.info.path, at=pb.VersionSelector(version=i.info.version)) for i in items]
    )
    for item, answer in zip(items, answers, strict=True):
        try:
            plan = _plan(client, item, LocalTarget.below(root, item.dest), answer, verify_key)
        except (CasError, OSError) as exc:
            results.append(_outcome(item, "failed", error=exc))
            continue
        if plan.result.up_to_date:
            results.append(plan.result)
            continue
        plans.append(plan)
    try:
        fetched = _fetch(client, target, plans)
    except IntegrityError:
        return results + [_alone(client, p.result, p.target, verify_key) for p in plans]
    for p in plans:
        try:
            _write(p, fetched)
        except (CasError, OSError) as exc:
            p.result.status, p.result.error = "failed", exc
            p.result.chunks_total = p.result.chunks_reused = p.result.chunks_fetched = p.result.bytes_fetched = 0
        results.append(p.result)
    return results


def _alone(client: StratusClient, planned: GetOutcome, target: LocalTarget, verify_key: object) -> GetOutcome:
    """Download one file of a failed group on its own, so a failure lands on the file it belongs to."""
    try:
        return client.get_file(planned.remote, target, version=planned.version, verify_key=verify_key)
    except (CasError, OSError) as exc:
        return GetOutcome(planned.remote, planned.local, "failed", planned.version, planned.size, error=exc)


def _outcome(item: RestoreItem, status: str, **counts: object) -> GetOutcome:
    info = item.info
    return GetOutcome(info.path, str(item.dest), status, info.version, info.size, **counts)  # type: ignore[arg-type]
