"""The version journal: every acknowledged version and delete marker, durably, in the data dir.

Redis/Valkey holds the path -> versions mapping, but nothing there is irreplaceable: each version
record the commit script writes is also appended to ``DATA/journal/<segment>.log`` and fsync'd
before the client hears of it, so ``stratus admin rebuild-index`` (service/rebuild.py) can
recreate every path, version, delete marker, signature and feed entry from the data dir alone.

Record format (self-describing, so a segment is readable without anything else)::

    b"SVJ1"  u32 length (big endian)  u32 CRC-32 of the payload  payload (length bytes)

The payload is UTF-8 JSON: ``{"ns": ..., "event": <change-feed id>, "record": {...}}`` where
``record`` is the version record as the metadata store holds it (records.record_fields: path,
version, created_ms, identity, deleted, manifest and file digests, size, mode, mtime, signature,
signer key, ...). Segments roll over at ``SEGMENT_BYTES``; a segment is append-only.

A forget (service/retention.py) appends one record per removed version instead:
``{"ns": ..., "event": <id of its "forgotten" feed event>, "forgotten": {"path", "version",
"size", "time_ms", "identity", "manifest"}}``. The rebuild leaves such a version out, so versions a
forget removed stay removed when the metadata is recreated. A forget runs its script first and
appends afterwards, answering only after the fsync, like a commit: were the server to crash in
between and Redis be lost as well, a rebuild would bring back versions whose forget was never
acknowledged (running the forget again removes them).

Order and crash cases. A commit runs the metadata script first and appends the record it returns
(with the version number and time the script chose) afterwards; the answer waits for the
journal's fsync. So:

* crash before the script: nothing anywhere; the client was not answered.
* crash after the script, before the journal fsync: Redis holds a version the journal may lack.
  The client was *not* answered (it sees an error and retries). A retry that finds the same
  content as head journals that head again (an unchanged commit re-journals its head), so an
  acknowledged "unchanged" answer is durable too. Were Redis lost as well, the rebuild omits that
  never-acknowledged version (its number stays a gap in the path's history).
* crash after the fsync, before the answer: the version is in both; the client retries and gets
  "unchanged". Nothing acknowledged is ever missing from the journal.
* crash in the middle of an append: the last segment ends in a torn record; opening the journal
  detects it (short header, short payload, bad magic or CRC) and cuts the file back to the last
  whole record. The same in an older segment is damage, reported by the rebuild.

Group commit: concurrent appends (the files of a CommitFiles batch come as one append; separate
calls arriving while a write is in progress join the next one) share one write and one fsync.
A failed write (disk full) is cut back off the segment and fails every append that shared it.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.errors import StorageFullError
from cas.pack import fsync_dir
from service.metadata import Event, VersionRecord
from service.metadata.records import record_fields, record_from_fields

MAGIC = b"SVJ1"
_HEADER = struct.Struct(">4sII")
SEGMENT_BYTES = 64 << 20
MAX_RECORD_BYTES = 16 << 20
JOURNAL_MARGIN_BYTES = 64 << 10  # free space a commit leaves at least, beyond its own records
SUFFIX = ".log"


@dataclass(frozen=True)
class JournalEntry:
    """One journaled version of a path in a namespace, with the change-feed id its commit got."""

    ns: str
    event_id: str
    record: VersionRecord


@dataclass(frozen=True)
class ForgetEntry:
    """One version a forget removed: its ``forgotten`` change-feed event (``cursor`` is its id)."""

    ns: str
    event: Event


Entry = JournalEntry | ForgetEntry


def _frame(d: dict[str, Any]) -> bytes:
    payload = json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def encode_entry(ns: str, record: VersionRecord) -> bytes:
    """The framed bytes of one journal record (header + JSON payload)."""
    return _frame({"ns": ns, "event": record.event_id, "record": record_fields(record)})


def encode_forget(ns: str, event: Event) -> bytes:
    """The framed bytes of the record of one version a forget removed."""
    return _frame({"ns": ns, "event": event.cursor, "forgotten": {
        "path": event.path, "version": event.version, "size": event.size, "time_ms": event.time_ms,
        "identity": event.identity, "manifest": event.manifest_digest.hex(),
    }})


def _decode_payload(payload: bytes) -> Entry:
    d: dict[str, Any] = json.loads(payload)
    if "forgotten" in d:
        f = d["forgotten"]
        return ForgetEntry(ns=d["ns"], event=Event(
            cursor=d["event"], kind="forgotten", path=f["path"], version=int(f["version"]), size=int(f["size"]),
            time_ms=int(f["time_ms"]), identity=f["identity"], manifest_digest=bytes.fromhex(f["manifest"]),
        ))
    return JournalEntry(ns=d["ns"], event_id=d["event"], record=record_from_fields(d["record"], d["event"]))


def scan(data: bytes) -> tuple[list[Entry], int, str]:
    """Entries of one segment's bytes, the length of its valid prefix, and why it stops there
    ("" when every byte is a whole, intact record)."""
    out: list[Entry] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < _HEADER.size:
            return out, pos, "a torn record header"
        magic, length, crc = _HEADER.unpack_from(data, pos)
        if magic != MAGIC or length > MAX_RECORD_BYTES:
            return out, pos, "bytes that are not a journal record"
        start = pos + _HEADER.size
        payload = data[start : start + length]
        if len(payload) < length:
            return out, pos, "a torn record"
        if zlib.crc32(payload) != crc:
            return out, pos, "a record with a bad checksum"
        try:
            out.append(_decode_payload(payload))
        except (ValueError, KeyError, TypeError) as exc:
            return out, pos, f"an unreadable record ({exc})"
        pos = start + length
    return out, pos, ""


def segments(folder: Path) -> list[Path]:
    """The journal's segment files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())


def read_all(folder: Path) -> tuple[list[Entry], list[str]]:
    """Every entry of every segment in order, and the damage found (a torn tail of the last
    segment is not damage: it was never acknowledged)."""
    entries: list[Entry] = []
    problems: list[str] = []
    files = segments(folder)
    for n, seg in enumerate(files):
        got, valid, why = scan(seg.read_bytes())
        entries += got
        if why and n < len(files) - 1:
            problems.append(f"journal segment {seg.name} is damaged at byte {valid} ({why}); records after it "
                            "in that segment are lost")
    return entries, problems


class Journal:
    """The append side of the journal (one per server; see the module docstring)."""

    def __init__(self, folder: Path, run_blocking: Callable[..., Awaitable[Any]]) -> None:
        self.folder = folder
        self._run = run_blocking
        self._lock = threading.Lock()
        self._fd = -1
        self._size = 0
        self._seq = 0
        self._pending: list[Callable[[], list[bytes]]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.cut_bytes = self._open()

    def _open(self) -> int:
        """Open the last segment for appending, cutting a torn tail; returns the bytes cut."""
        self.folder.mkdir(parents=True, exist_ok=True)
        files = segments(self.folder)
        if not files:
            self._start_segment(1)
            return 0
        last = files[-1]
        data = last.read_bytes()
        _, valid, _ = scan(data)
        self._seq = int(last.stem)
        self._fd = os.open(last, os.O_WRONLY | os.O_APPEND)
        if valid < len(data):
            os.ftruncate(self._fd, valid)
            os.fsync(self._fd)
        self._size = valid
        return len(data) - valid

    def _start_segment(self, seq: int) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._seq = seq
        self._fd = os.open(self.folder / f"{seq:08d}{SUFFIX}", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = 0
        fsync_dir(self.folder)

    def is_empty(self) -> bool:
        """True while no segment holds a record (a new journal, or one never written to)."""
        return all(seg.stat().st_size == 0 for seg in segments(self.folder))

    def write_seed(self, blobs: Sequence[bytes]) -> None:
        """Write segment 0 (oldest) in one go: temp file, fsync, rename, fsync the folder. For the
        records of a store from before the journal; a crash before the rename leaves no trace."""
        temp = self.folder / f"{0:08d}{SUFFIX}.tmp"
        with open(temp, "wb") as f:
            f.write(b"".join(blobs))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.folder / f"{0:08d}{SUFFIX}")
        fsync_dir(self.folder)

    def check_room(self, nbytes: int) -> None:
        """Refuse (StorageFullError) when the journal's file system lacks ``nbytes`` plus a margin.

        Called before a commit script runs: a version is written to Redis/Valkey before it is
        journaled, so a journal append that fails on a full disk would leave a version readers see
        but no client was told of. Commits may use the free-space reserve that chunk writes keep
        (cas.store.check_room), so this asks only for the bytes themselves.
        """
        st = os.statvfs(self.folder)
        if st.f_bavail * st.f_frsize < nbytes + JOURNAL_MARGIN_BYTES:
            raise StorageFullError()

    def close(self) -> None:
        """Close the segment file (appends after this fail)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def write_durably(self, blobs: Sequence[bytes]) -> None:
        """Append framed records and fsync them (blocking); on failure nothing of them remains."""
        data = b"".join(blobs)
        with self._lock:
            if self._size and self._size + len(data) > SEGMENT_BYTES:
                self._start_segment(self._seq + 1)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                os.fsync(self._fd)
            except OSError:
                os.ftruncate(self._fd, self._size)
                raise
            self._size += len(data)

    async def append(self, ns: str, records: Sequence[VersionRecord]) -> None:
        """Make ``records`` of namespace ``ns`` durable; returns once they are on disk."""
        if records:
            await self._append(lambda: [encode_entry(ns, r) for r in records])

    async def append_forgotten(self, ns: str, events: Sequence[Event]) -> None:
        """Make the removals a forget made (their ``forgotten`` events) durable."""
        if events:
            await self._append(lambda: [encode_forget(ns, e) for e in events])

    async def _append(self, encode: Callable[[], list[bytes]]) -> None:
        """Queue ``encode`` (run on the worker thread that writes, off the event loop) for the next
        group write; returns once its records are on disk."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(encode)
        self._waiters.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        await asyncio.shield(future)

    def _encode_and_write(self, pending: Sequence[Callable[[], list[bytes]]]) -> None:
        """Encode the queued records and write them durably, in the order they were queued."""
        self.write_durably([blob for encode in pending for blob in encode()])

    async def _flush(self) -> None:
        while self._pending:
            pending, self._pending = self._pending, []
            waiters, self._waiters = self._waiters, []
            try:
                await self._run(self._encode_and_write, pending)
            except Exception as exc:  # noqa: BLE001 - handed to every append that shared the write
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            for w in waiters:
                if not w.done():
                    w.set_result(None)
