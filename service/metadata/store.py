"""Namespace metadata in Redis or Valkey: versions, heads, listings, the change feed, the chunk index.

The keys and what they hold are in ``keys.py``; the scripts that change them atomically in ``lua/``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from cas.errors import (
    InvalidDigestError,
    InvalidInputError,
    InvalidPathError,
    ManifestError,
    MissingChunksError,
    NotFoundError,
    VersionConflictError,
)
from service.metadata import scripts as lua
from service.metadata.feed import ChangeFeed
from service.metadata.keys import _Keys
from service.metadata.records import (
    Event,
    NamespaceStats,
    VersionRecord,
    decode_event,
    decode_record,
    encode_body,
    stored_form,
)

__all__ = ["Event", "HeadMoved", "MetadataStore", "NamespaceStats", "PutVersion", "VersionRecord"]

DIGEST_SIZE = 32

_PREFIX_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_STREAM_ID_RE = re.compile(r"\d{1,20}(-\d{1,20})?")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_STATS_FIELDS = (b"unique_bytes", b"logical_bytes", b"file_count", b"version_count")
# A listing page skips tombstones; past this many scanned paths it returns a short page (with a
# cursor) rather than hold the caller for an unbounded scan of a namespace full of deletes.
_MAX_LIST_SCAN = 10_000
_SLICE = 10_000


def _path_bytes(path: str, what: str = "path") -> bytes:
    """UTF-8 of a path (or path prefix), refusing what can never be a key of this schema."""
    if not isinstance(path, str):
        raise InvalidPathError(f"{what} must be a string, not {type(path).__name__}")
    if _CONTROL_RE.search(path):
        raise InvalidPathError(f"{what} {path!r} contains a control character")
    try:
        return path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPathError(f"{what} {path!r} is not valid Unicode (lone surrogate)") from exc


def _check_prefixes(prefix: str | tuple[str, ...]) -> None:
    for one in prefix if isinstance(prefix, tuple) else (prefix,):
        _path_bytes(one, "prefix")


def _digest(d: bytes, what: str) -> bytes:
    if not isinstance(d, bytes | bytearray) or len(d) != DIGEST_SIZE:
        raise InvalidDigestError(f"{what} must be {DIGEST_SIZE} bytes, got {d!r:.80}")
    return bytes(d)


def _joined_digests(digests: Sequence[bytes]) -> tuple[list[bytes], bytes]:
    """Digests without duplicates (first-seen order), and their concatenation for the scripts."""
    try:
        unique = list(dict.fromkeys(digests))
        joined = b"".join(unique)
    except TypeError as exc:
        raise InvalidDigestError("chunk digests must be bytes") from exc
    # set(map(len)) runs in C: checking 200k digests one by one in Python costs ~90 ms
    if set(map(len, unique)) - {DIGEST_SIZE}:
        bad = next(d for d in unique if len(d) != DIGEST_SIZE)
        raise InvalidDigestError(f"chunk digest must be {DIGEST_SIZE} bytes, got {len(bad)}")
    return unique, joined


def _joined_lengths(path: str, digests: Sequence[bytes], lengths: Sequence[int], unique: int) -> str:
    """The lengths of the distinct digests (first-seen order, as ``_joined_digests``), comma-separated.

    ``unique`` is the number of distinct digests. ManifestError when one digest is given two
    lengths; InvalidInputError when the lists differ in size or a length is not an int.
    """
    if len(digests) != len(lengths):
        raise InvalidInputError(f"{path}: {len(digests)} chunk digests but {len(lengths)} lengths")
    if set(map(type, lengths)) - {int}:  # in C; the values are joined into the script's argument
        raise InvalidInputError(f"{path}: chunk lengths must be integers")
    if unique == len(digests):  # no digest repeats: the lengths are already in order
        return ",".join(map(str, lengths))
    first: dict[bytes, int] = {}
    for d, n in zip(digests, lengths, strict=True):
        if first.setdefault(d, n) != n:
            raise ManifestError(f"{path}: the manifest gives chunk {bytes(d).hex()} two lengths ({first[d]} and {n})")
    return ",".join(map(str, first.values()))


def _split_digests(blob: bytes) -> list[bytes]:
    return [blob[i : i + DIGEST_SIZE] for i in range(0, len(blob), DIGEST_SIZE)]


def _cursor(since: str) -> str:
    if not isinstance(since, str) or not _STREAM_ID_RE.fullmatch(since):
        raise InvalidInputError(f"invalid change-feed cursor {since!r}")
    return since


@dataclass(frozen=True)
class PutVersion:
    """One file of a commit: the version record's fields, and the checks the script makes.

    ``if_version`` is the caller's condition (VersionConflictError); ``expected`` the head version
    the caller computed the record against (None: unchecked), answered by :class:`HeadMoved`.
    ``manifest`` is the inline manifest (service/manifests.py), b"" when it is stored.
    """

    path: str
    manifest_digest: bytes
    size: int
    file_digest: bytes
    chunk_digests: Sequence[bytes]
    chunk_count: int
    new_chunks: int
    new_bytes: int
    identity: str
    mode: int
    mtime_ns: int
    chunk_lengths: Sequence[int] | None = None
    signature: bytes = b""
    signer_public_key: bytes = b""
    if_version: int | None = None
    expected: int | None = None
    manifest: bytes = b""


@dataclass(frozen=True)
class HeadMoved:
    """The answer for a file whose head was not the ``expected`` version: nothing was written;
    ``head`` is the head record found (None: the path has no version)."""

    head: VersionRecord | None


def _reply(path: str, if_version: int | None, res: list[Any]) -> VersionRecord | HeadMoved | Exception:
    """The outcome of one file's reply from put_version.lua."""
    tag = res[0]
    if tag == b"ok":
        record = decode_record(path, res[1])
        record.event_id = res[2].decode()
        return record
    if tag == b"moved":
        return HeadMoved(decode_record(path, res[2]) if res[2] else None)
    if tag == b"conflict":
        return VersionConflictError(path, 0 if if_version is None else if_version, int(res[1]))
    if tag == b"missing":
        return MissingChunksError(_split_digests(res[1]))
    if tag == b"notfound":
        return NotFoundError(f"{path}: no such file")
    if tag == b"badlength":
        return ManifestError(
            f"{path}: the manifest gives chunk {res[1].hex()} a length of {int(res[3])} bytes but the "
            f"stored chunk has {int(res[2])} bytes; nothing was committed"
        )
    return RuntimeError(f"unexpected reply from the commit script: {res!r:.200}")


class MetadataStore:
    """Versions, heads, listings, change feed and chunk index of every namespace, in Redis/Valkey.

    The client must be created with ``decode_responses=False`` (digests and paths are bytes).
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "sv") -> None:
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"invalid key prefix {prefix!r}: use 1-64 characters of A-Z a-z 0-9 . _ : -")
        kwargs = getattr(getattr(redis, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("MetadataStore needs a Redis client created with decode_responses=False")
        self._redis = redis
        self.prefix = prefix
        self._write = redis.register_script(lua.WRITE_VERSION)
        self._write_group = redis.register_script(lua.WRITE_VERSIONS)
        self._read = redis.register_script(lua.READ_RECORDS)
        self._versions = redis.register_script(lua.READ_VERSIONS)
        self._add_chunks = redis.register_script(lua.ADD_CHUNKS)
        self._missing = redis.register_script(lua.MISSING_CHUNKS)
        self._remove_chunks = redis.register_script(lua.REMOVE_CHUNKS)
        self._forget = redis.register_script(lua.FORGET_VERSIONS)
        self._feed = ChangeFeed(redis)

    def _keys(self, ns: str) -> _Keys:
        return _Keys(self.prefix, ns)

    # ---- writes ---------------------------------------------------------------------------

    async def commit(self, ns: str, path: str, *, now_ms: int | None = None, **put: Any) -> VersionRecord:
        """Atomically write a new version of ``path`` and move its head (``put``: the fields of
        :class:`PutVersion` but ``path`` and ``expected``).

        Raises VersionConflictError when ``if_version`` is given and is not the head (0 means
        "no live head"), MissingChunksError (in request order) when a digest is not in the
        namespace's chunk index, ManifestError when ``chunk_lengths`` (parallel to
        ``chunk_digests``) gives a chunk another length than the index holds; in every case
        nothing changes. The lengths are checked inside the commit script: one round trip.
        """
        outcome = (await self.commit_group(ns, [PutVersion(path=path, **put)], now_ms=now_ms))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, VersionRecord), "no expected head was given, so the head cannot have moved"
        return outcome

    async def commit_group(
        self, ns: str, puts: Sequence[PutVersion], *, now_ms: int | None = None
    ) -> list[VersionRecord | HeadMoved | Exception]:
        """Write versions of distinct paths in one script call (one round trip, one AOF write).

        Per file, in order: the new record, :class:`HeadMoved` when ``expected`` is set and the
        head is another version, or the error :meth:`commit` would raise; every file succeeds or
        fails on its own, and a failed one changes nothing.
        """
        keys = self._keys(ns)
        script_keys = [keys.files, keys.events, keys.chunks, keys.stats]
        args: list[str | bytes] = ["" if now_ms is None else str(int(now_ms))]
        out: list[VersionRecord | HeadMoved | Exception | None] = []
        sent: list[int] = []
        for n, put in enumerate(puts):
            try:
                p, item = self._put_args(put)
            except (InvalidInputError, InvalidPathError, InvalidDigestError, ManifestError) as exc:
                out.append(exc)
                continue
            out.append(None)
            sent.append(n)
            script_keys += [keys.head(p), keys.versions(p), keys.timeline(p)]
            args += item
        if sent:
            replies = await self._write_group(keys=script_keys, args=args)
            for n, reply in zip(sent, replies, strict=True):
                out[n] = _reply(puts[n].path, puts[n].if_version, reply)
        return [o for o in out if o is not None]

    def _put_args(self, put: PutVersion) -> tuple[bytes, list[str | bytes]]:
        """The path's key bytes and the ten script arguments of one put (see put_version.lua)."""
        p = _path_bytes(put.path)
        if not p:
            raise InvalidPathError("path must not be empty")
        if put.size < 0:
            raise InvalidInputError(f"{put.path}: negative size {put.size}")
        if put.if_version is not None and put.if_version < 0:
            raise InvalidInputError(f"{put.path}: negative if_version {put.if_version}")
        unique, joined = _joined_digests(put.chunk_digests)
        lengths = "" if put.chunk_lengths is None else _joined_lengths(
            put.path, put.chunk_digests, put.chunk_lengths, len(unique)
        )
        body = encode_body(
            deleted=False, size=int(put.size), identity=str(put.identity), mode=int(put.mode),
            mtime_ns=int(put.mtime_ns), manifest_digest=_digest(put.manifest_digest, "manifest digest"),
            file_digest=_digest(put.file_digest, "file digest"), chunk_count=int(put.chunk_count),
            new_chunks=int(put.new_chunks), new_bytes=int(put.new_bytes), signature=put.signature,
            signer_public_key=put.signer_public_key, manifest=bytes(put.manifest),
        )
        return p, [
            "put", p, "" if put.if_version is None else str(int(put.if_version)),
            "" if put.expected is None else str(int(put.expected)), body, str(int(put.size)), joined,
            put.manifest_digest.hex(), put.identity, lengths,
        ]

    async def delete(
        self, ns: str, path: str, *, identity: str, if_version: int | None = None, now_ms: int | None = None
    ) -> VersionRecord:
        """Write a tombstone version of ``path``; NotFoundError if it has no live head."""
        keys = self._keys(ns)
        p = _path_bytes(path)
        body = encode_body(
            deleted=True, size=0, identity=str(identity), mode=0, mtime_ns=0, manifest_digest=b"",
            file_digest=b"", chunk_count=0, new_chunks=0, new_bytes=0, signature=b"", signer_public_key=b"",
        )
        return await self._write_version(
            keys, path, p, "delete", body, 0, b"", "", identity, if_version, now_ms
        )

    async def _write_version(
        self, keys: _Keys, path: str, p: bytes, kind: str, body: str, size: int, digests: bytes,
        manifest_hex: str, identity: str, if_version: int | None, now_ms: int | None, lengths: str = "",
    ) -> VersionRecord:
        if if_version is not None and if_version < 0:
            raise InvalidInputError(f"{path}: negative if_version {if_version}")
        res = await self._write(
            keys=[keys.files, keys.head(p), keys.versions(p), keys.events, keys.chunks, keys.stats, keys.timeline(p)],
            args=[
                kind, p, "" if if_version is None else str(int(if_version)),
                "" if now_ms is None else str(int(now_ms)), body, str(int(size)), digests, manifest_hex,
                identity, lengths,
            ],
        )
        outcome = _reply(path, if_version, res)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, VersionRecord)
        return outcome

    async def forget(
        self, ns: str, path: str, *, head_version: int, identity: str, versions: Sequence[VersionRecord]
    ) -> list[Event]:
        """Remove ``versions`` of ``path`` atomically (lua/forget_versions.lua); returns the
        ``forgotten`` change-feed event of each one removed by this call (one already gone is skipped).

        VersionConflictError, removing nothing, when the head is no longer ``head_version`` (the
        plan is stale: make it again). The head is never removed. Each removal lowers the version
        and logical-byte counters and adds a ``forgotten`` event.
        """
        keys = self._keys(ns)
        p = _path_bytes(path)
        args: list[str | bytes] = [p, str(int(head_version)), identity]
        for rec in versions:
            args += [str(int(rec.version)), str(int(rec.size)), rec.manifest_digest.hex()]
        res = await self._forget(
            keys=[keys.head(p), keys.versions(p), keys.timeline(p), keys.events, keys.stats], args=args
        )
        if res[0] == b"moved":
            raise VersionConflictError(path, head_version, int(res[1]))
        flat, now = res[1], int(res[2])
        doomed = {rec.version: rec for rec in versions}
        return [
            Event(cursor=flat[i + 1].decode(), kind="forgotten", path=path, version=int(flat[i]),
                  size=doomed[int(flat[i])].size, time_ms=now, identity=identity,
                  manifest_digest=doomed[int(flat[i])].manifest_digest)
            for i in range(0, len(flat), 2)
        ]

    # ---- chunk index ----------------------------------------------------------------------

    async def add_chunks(self, ns: str, chunks: Sequence[tuple[bytes, int]], view: str | None = None) -> int:
        """Record (digest, uncompressed length) pairs in the chunk index (or in ``view``'s chunk
        view); returns how many were new to it."""
        index, stats = self._keys(ns).chunk_index(view)
        added = 0
        for start in range(0, len(chunks), _SLICE):
            # first length wins for a digest repeated in the request
            part: dict[bytes, int] = {}
            for d, n in chunks[start : start + _SLICE]:
                part.setdefault(_digest(d, "chunk digest"), int(n))
            joined = b"".join(part)
            lengths = ",".join(map(str, part.values()))
            added += await self._add_chunks(keys=[index, stats], args=[joined, lengths])
        return added

    async def remove_chunks(self, ns: str, digests: Sequence[bytes]) -> int:
        """Drop digests from the chunk index (for garbage collection); returns how many were there."""
        keys = self._keys(ns)
        removed = 0
        for start in range(0, len(digests), _SLICE):
            _, joined = _joined_digests(digests[start : start + _SLICE])
            removed += await self._remove_chunks(keys=[keys.chunks, keys.stats], args=[joined])
        return removed

    async def missing_chunks(self, ns: str, digests: Sequence[bytes], view: str | None = None) -> list[bytes]:
        """The digests absent from the namespace's chunk index (or from ``view``'s chunk view), in
        request order, without duplicates."""
        index, _ = self._keys(ns).chunk_index(view)
        missing: list[bytes] = []
        unique, _ = _joined_digests(digests)
        for start in range(0, len(unique), _SLICE):
            blob = await self._missing(keys=[index], args=[b"".join(unique[start : start + _SLICE])])
            missing += _split_digests(blob)
        return missing

    # ---- reads ----------------------------------------------------------------------------

    async def head(self, ns: str, path: str) -> VersionRecord | None:
        """The head version of ``path`` (possibly a tombstone), or None if never committed."""
        return (await self._records(self._keys(ns), [path], None))[0]

    async def get_version(self, ns: str, path: str, version: int) -> VersionRecord | None:
        """One version of ``path``, or None if it does not exist."""
        keys = self._keys(ns)
        if version < 1:
            return None
        raw = await self._redis.hget(keys.versions(_path_bytes(path)), str(int(version)))
        return None if raw is None else decode_record(path, raw)

    async def version_as_of(self, ns: str, path: str, as_of_ms: int) -> VersionRecord | None:
        """The newest version of ``path`` created at or before ``as_of_ms`` (O(log n)), or None."""
        return (await self._records(self._keys(ns), [path], int(as_of_ms)))[0]

    async def list_versions(self, ns: str, path: str, limit: int = 0) -> list[VersionRecord]:
        """Versions of ``path``, newest first; ``limit`` 0 means all."""
        keys = self._keys(ns)
        p = _path_bytes(path)
        raws = await self._versions(keys=[keys.head(p), keys.versions(p), keys.timeline(p)], args=[max(0, int(limit))])
        return [decode_record(path, r) for r in raws]

    async def version_before(self, ns: str, path: str, version: int) -> VersionRecord | None:
        """The newest remaining version of ``path`` numbered below ``version`` (a forget may have
        removed ``version - 1``), or None."""
        if version < 2:
            return None
        direct = await self.get_version(ns, path, version - 1)
        if direct is not None:
            return direct
        return next((r for r in await self.list_versions(ns, path) if r.version < version), None)

    async def _records(
        self, keys: _Keys, paths: list[str], as_of_ms: int | None
    ) -> list[VersionRecord | None]:
        script_keys: list[bytes] = []
        for path in paths:
            p = _path_bytes(path)
            script_keys += [keys.head(p), keys.versions(p), keys.timeline(p)]
        raws = await self._read(keys=script_keys, args=["" if as_of_ms is None else str(as_of_ms)])
        return [None if r is None else decode_record(path, r) for path, r in zip(paths, raws, strict=True)]

    async def list_files(
        self,
        ns: str,
        prefix: str,
        *,
        after: str = "",
        limit: int = 100,
        as_of_ms: int = 0,
        include_deleted: bool = False,
    ) -> tuple[list[VersionRecord], str]:
        """Files under ``prefix`` sorted by path (UTF-8 byte order), strictly after ``after``.

        Returns (records, cursor): pass the cursor back as ``after``; it is "" once the listing is
        done. With ``as_of_ms`` each path shows its version at that time. Tombstones are skipped
        unless ``include_deleted``; pages are full whenever enough paths remain.
        """
        keys = self._keys(ns)
        if limit < 1:
            raise InvalidInputError(f"page size must be at least 1, got {limit}")
        pre = _path_bytes(prefix, "prefix")
        aft = _path_bytes(after, "page token")
        lo = b"(" + aft if aft and aft >= pre else (b"[" + pre if pre else b"-")
        # UTF-8 never contains 0xff, so it bounds every path that starts with the prefix
        hi = b"(" + pre + b"\xff" if pre else b"+"
        as_of = as_of_ms if as_of_ms > 0 else None
        out: list[VersionRecord] = []
        scanned = 0
        while True:
            want = limit - len(out) + 1
            batch = await self._redis.zrangebylex(keys.files, lo, hi, start=0, num=want)
            if not batch:
                return out, ""
            paths = [b.decode("utf-8") for b in batch]
            records = await self._records(keys, paths, as_of)
            for i, rec in enumerate(records):
                if rec is None or (rec.deleted and not include_deleted):
                    continue
                out.append(rec)
                if len(out) == limit:
                    done = i == len(batch) - 1 and len(batch) < want
                    return out, "" if done else rec.path
            if len(batch) < want:
                return out, ""
            scanned += len(batch)
            lo = b"(" + batch[-1]
            if scanned >= _MAX_LIST_SCAN:
                return out, paths[-1]

    # ---- change feed ----------------------------------------------------------------------

    async def changes(
        self, ns: str, since: str, limit: int, prefix: str | tuple[str, ...] = ""
    ) -> tuple[list[Event], str]:
        """Up to ``limit`` events after cursor ``since`` ("" = from the beginning) under ``prefix``
        (or under any of several prefixes).

        Returns (events, cursor); the cursor is unchanged when there was nothing new, and moves past
        events skipped by the prefix filter so they are not scanned again.
        """
        keys = self._keys(ns)
        _check_prefixes(prefix)
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        cursor = since
        out: list[Event] = []
        scanned = 0
        while len(out) < limit and scanned < _MAX_LIST_SCAN:
            start = "(" + _cursor(cursor) if cursor else "-"
            want = limit - len(out)
            entries = await self._redis.xrange(keys.events, min=start, max="+", count=want)
            for entry_id, fields in entries:
                ev = decode_event(entry_id, fields)
                cursor = ev.cursor
                if ev.path.startswith(prefix):
                    out.append(ev)
            scanned += len(entries)
            if len(entries) < want:
                break
        return out, cursor

    async def watch(
        self, ns: str, since: str = "", prefix: str | tuple[str, ...] = "", block_ms: int = 1000
    ) -> AsyncIterator[Event]:
        """Events under ``prefix`` (or any of several prefixes) as they happen, forever.

        ``since`` "" starts with events newer than the call, "0" from the beginning, otherwise after
        that cursor. All watchers of a namespace share one XREAD BLOCK loop (``block_ms`` per read,
        taken from the watcher that starts it), so idle watchers hold no Redis connection.
        """
        keys = self._keys(ns)
        _check_prefixes(prefix)
        if block_ms < 1:
            raise InvalidInputError("block_ms must be positive (0 would block forever)")
        cursor = "0-0" if since == "0" else (since and _cursor(since))
        async with aclosing(self._feed.entries(keys.events, cursor, block_ms)) as entries:
            async for entry_id, fields in entries:
                ev = decode_event(entry_id, fields)
                if ev.path.startswith(prefix):
                    yield ev

    # ---- rebuild from the data dir (service/rebuild.py) ----------------------------------------

    async def namespaces(self) -> list[str]:
        """Every namespace with at least one committed path."""
        found = set()
        async for key in self._redis.scan_iter(match=f"{self.prefix}:{{*}}:files", count=1000):
            found.add(key.decode()[len(self.prefix) + 2 : -len("}:files")])
        return sorted(found)

    async def all_versions(self, ns: str) -> AsyncIterator[VersionRecord]:
        """Every version of every path of ``ns`` (oldest first per path), each with its feed id when
        the change feed still holds it."""
        keys = self._keys(ns)
        ids: dict[tuple[bytes, bytes], str] = {}
        for entry_id, f in await self._redis.xrange(keys.events):
            ids[(f[b"path"], f[b"version"])] = entry_id.decode()
        async for member in self._redis.zscan_iter(keys.files, count=500):
            p = member[0] if isinstance(member, tuple) else member
            raws = await self._redis.hgetall(keys.versions(p))
            for number in sorted(raws, key=int):
                rec = decode_record(p.decode("utf-8"), raws[number])
                rec.event_id = ids.get((p, number), "")
                yield rec

    async def restore_path(self, ns: str, path: str, records: Sequence[VersionRecord]) -> None:
        """Write the versions of ``path`` (oldest first, as journaled) and point its head at the last.

        Only for an empty prefix: the records are written as they are, not through the commit script.
        Numbers with gaps (versions a forget removed) get the path's timeline (keys.py).
        """
        keys = self._keys(ns)
        p = _path_bytes(path)
        head = records[-1]
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(keys.versions(p), mapping={str(r.version): stored_form(r) for r in records})
        if [r.version for r in records] != list(range(1, len(records) + 1)):
            pipe.zadd(keys.timeline(p), {f"{r.version:020d}": r.created_ms for r in records})
        pipe.hset(keys.head(p), mapping={
            "version": str(head.version), "created_ms": str(head.created_ms), "deleted": "1" if head.deleted else "0",
        })
        pipe.zadd(keys.files, {p: 0})
        await pipe.execute()

    async def restore_feed(self, ns: str, events: Sequence[Event]) -> str:
        """Append ``events`` to the feed under the ids (cursors) their commits and forgets had, in
        increasing order ("" = a new id); returns the last id, the feed's position after the rebuild."""
        keys = self._keys(ns)
        pipe = self._redis.pipeline(transaction=False)
        for e in events:
            pipe.xadd(keys.events, {
                "kind": e.kind, "path": _path_bytes(e.path), "version": str(e.version), "size": str(e.size),
                "time_ms": str(e.time_ms), "identity": e.identity, "manifest": e.manifest_digest.hex(),
            }, id=e.cursor or "*")
        ids = await pipe.execute()
        return ids[-1].decode() if ids else ""

    async def restore_counters(self, ns: str, logical_bytes: int, file_count: int, version_count: int) -> None:
        """Set the version counters of the namespace's stats (unique_bytes come from add_chunks)."""
        await self._redis.hset(self._keys(ns).stats, mapping={
            "logical_bytes": str(logical_bytes), "file_count": str(file_count), "version_count": str(version_count),
        })

    # ---- store binding (service/binding.py) --------------------------------------------------

    async def store_id(self) -> str | None:
        """The id of the chunk store this metadata is bound to, or None if it is not bound."""
        raw = await self._redis.get(f"{self.prefix}:store-id")
        return raw.decode() if raw else None

    async def claim_store_id(self, store_id: str) -> str:
        """Bind to ``store_id`` unless already bound; returns the id the metadata is bound to."""
        key = f"{self.prefix}:store-id"
        if await self._redis.set(key, store_id, nx=True):
            return store_id
        return (await self._redis.get(key) or b"").decode()

    async def has_data(self) -> bool:
        """True if any namespace key exists under the prefix (one SCAN, stopped at the first hit)."""
        cursor = 0
        while True:
            cursor, keys = await self._redis.scan(cursor, match=f"{self.prefix}:{{*", count=1000)
            if keys:
                return True
            if not cursor:
                return False

    # ---- statistics -----------------------------------------------------------------------

    async def stats(self, ns: str) -> NamespaceStats:
        """Counters of the namespace (chunk index size, bytes, live files, versions)."""
        keys = self._keys(ns)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hlen(keys.chunks)
        pipe.hmget(keys.stats, list(_STATS_FIELDS))
        chunk_count, values = await pipe.execute()
        unique, logical, files, versions = (int(v or 0) for v in values)
        return NamespaceStats(
            chunk_count=int(chunk_count), unique_bytes=unique, logical_bytes=logical,
            file_count=files, version_count=versions,
        )

    async def indexed_chunk_batches(self) -> AsyncIterator[list[bytes]]:
        """The digests of every namespace's chunk index, in batches (duplicates across namespaces)."""
        async for key in self._redis.scan_iter(match=f"{self.prefix}:{{*}}:chunks", count=1000):
            batch: list[bytes] = []
            async for field, _ in self._redis.hscan_iter(key, count=1000):
                batch.append(field)
                if len(batch) >= 1000:
                    yield batch
                    batch = []
            if batch:
                yield batch

    async def referenced_manifests(self, ns: str) -> AsyncIterator[bytes]:
        """Manifest digests of every version of every path (for garbage collection), duplicates possible."""
        keys = self._keys(ns)
        async for member in self._redis.zscan_iter(keys.files, count=500):
            p = member[0] if isinstance(member, tuple) else member
            async for _, raw in self._redis.hscan_iter(keys.versions(p), count=1000):
                digest = json.loads(raw)["manifest_digest"]
                if digest:
                    yield bytes.fromhex(digest)
