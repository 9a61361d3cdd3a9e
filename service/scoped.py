"""What a caller confined to parts of a namespace (a prefix grantee) may see and fetch.

Paths are checked by the gate. Chunk-level calls carry no path, so for a confined caller (see
:class:`service.gate.Caller`) they answer from the caller's own *chunk view* instead of the
namespace's chunk index. The view holds exactly

* the chunks the caller uploaded itself (PutChunks, Upload): it proved it holds their bytes, and
* the chunks of every manifest it was given (GetManifest, GetManifests) for a path it may read.

So FindMissingChunks, PutChunks' ``stored``, GetChunks and the missing-chunk check of a commit
tell a grantee nothing about chunks of the namespace outside its prefixes, and it cannot commit
(and then read) a chunk it never held by naming its digest. The bytes are still stored once on
disk: only the answers are per view.
"""

from __future__ import annotations

from collections.abc import Sequence

from cas.errors import MissingChunksError
from cas.manifest import ChunkRef, Manifest
from service.commits import CommitRequest
from service.gate import Caller
from service.metadata import VersionRecord
from service.repository import Repository


async def show_manifest(repo: Repository, caller: Caller, manifest: Manifest) -> None:
    """Record that a confined caller was given ``manifest`` (of a path it may read)."""
    if caller.view is not None and manifest.chunks:
        await repo.show_chunks(caller.namespace, [(ref.digest, ref.length) for ref in manifest.chunks], caller.view)


def _literal_digests(c: CommitRequest) -> list[bytes]:
    """Chunks a commit names itself: all of a full manifest, the literal pieces of a delta (its
    runs come from a version of the same path, which the committer could read anyway)."""
    if isinstance(c.manifest, Manifest):
        return c.manifest.unique_digests()
    return list(dict.fromkeys(p.digest for p in c.manifest.pieces if isinstance(p, ChunkRef)))


async def check_possession(repo: Repository, caller: Caller, c: CommitRequest) -> None:
    """MissingChunksError for the chunks of ``c`` a confined caller neither uploaded nor was shown."""
    if caller.view is None:
        return
    digests = _literal_digests(c)
    if digests:
        missing = await repo.missing_in_view(caller.namespace, digests, caller.view)
        if missing:
            raise MissingChunksError(missing)


async def possessed(
    repo: Repository, caller: Caller, c: CommitRequest | BaseException
) -> CommitRequest | BaseException:
    """:func:`check_possession` for one entry of a batch: the entry, or the error refusing it."""
    if isinstance(c, BaseException):
        return c
    try:
        await check_possession(repo, caller, c)
    except MissingChunksError as exc:
        return exc
    return c


async def list_within(
    repo: Repository, ns: str, prefixes: Sequence[str], *, after: str, limit: int, as_of_ms: int,
    include_deleted: bool,
) -> tuple[list[VersionRecord], str]:
    """A listing page over several disjoint prefixes (sorted), continuing after path ``after``.

    Every path under a prefix sorts between the prefix and the next prefix that is not its
    extension, so listing the prefixes in order and skipping the ones ``after`` is past keeps
    the page order and the page token of a single-prefix listing.
    """
    out: list[VersionRecord] = []
    for n, prefix in enumerate(prefixes):
        if after > prefix and not after.startswith(prefix):
            continue  # every path under this prefix is at or before the token
        records, last = await repo.list_files(
            ns, prefix, after=after, limit=limit - len(out), as_of_ms=as_of_ms, include_deleted=include_deleted,
        )
        out += records
        if last:
            return out, last
        if len(out) == limit:
            return out, out[-1].path if n + 1 < len(prefixes) else ""
    return out, ""
