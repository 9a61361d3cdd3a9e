"""Pack files: append-only files of self-describing records, written with group commit.

Packs live in ``<root>/packs/<2 hex>/<16 hex pack id>.pack``. A writer appends records to its
open pack until the next record would take it past ``max_pack_size``, then seals it and starts a
new one. A sealed pack never changes again (space is reclaimed by writing new packs).

Byte layout (integers big-endian)::

    pack   = file header, record*, [seal record]
    file header (16 bytes)
      0   6  b"SVPACK"
      6   1  format version (1)
      7   1  reserved (0)
      8   8  pack id (its hex is the file name)
    record = header (84 bytes) + payload
      0   4  magic b"SVPR"
      4   1  format version (1)
      5   1  type: 1 chunk frame, 2 delta frame, 3 manifest, 4 version-journal entry, 5 seal
      6   1  method of the payload (cas.codec: 0 raw, 1 zstd; cas.delta: 2; 0 for opaque payloads)
      7   1  delta chain depth (0 unless type 2)
      8   4  payload length
     12  32  digest (BLAKE3 of the uncompressed content; zero for a seal)
     44  32  base digest of a delta record (zero otherwise)
     76   4  CRC-32 of the payload
     80   4  CRC-32 of header bytes 0..79 (so it covers the payload CRC too)
     84   .  payload
    seal payload (12 bytes): record count before the seal (u32), offset of the seal itself (u64)

Invariants:
- Every record can be checked on its own: a flipped bit anywhere in it fails a CRC, so a reader
  given only a location detects damage, and :func:`scan` finds every intact record without an
  index (it skips a damaged payload by its verified length, and re-synchronises on the magic after
  a damaged header).
- Durability: :meth:`PackWriter.flush` is one barrier (fdatasync of each pack written since the
  last flush, and of the folders that got a new pack) for everything appended since the last
  flush; it returns the locations made durable, and no location is returned before that.
- A pack is written only by the process holding its ``flock``; :func:`recover` (run on open) skips
  locked packs, cuts a torn tail (a partial record, or a record failing its CRC with no intact
  record after it) off an unlocked, unsealed pack, and seals it. The seal is an optimisation (a
  sealed pack needs no scan on open): the format is fully readable without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import secrets
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import NamedTuple

from cas.digest import DIGEST_SIZE, check_digest
from cas.errors import CorruptChunkError

FILE_MAGIC = b"SVPACK"
RECORD_MAGIC = b"SVPR"
FORMAT_VERSION = 1
SUFFIX = ".pack"
DEFAULT_MAX_PACK_SIZE = 32 * 1024 * 1024
MAX_PACK_SIZE_LIMIT = 1 << 32  # offsets are stored in 32 bits by location indexes

_FILE_HEADER = struct.Struct(">6sBB8s")
_HEADER = struct.Struct(">4sBBBBI32s32sI")  # everything up to and including the payload CRC
_CRC = struct.Struct(">I")
_SEAL = struct.Struct(">IQ")
FILE_HEADER_SIZE = _FILE_HEADER.size
HEADER_SIZE = _HEADER.size + _CRC.size
SEAL_SIZE = HEADER_SIZE + _SEAL.size
_ZERO = bytes(DIGEST_SIZE)


class RecordType(IntEnum):
    """What a record's payload is."""

    CHUNK = 1
    DELTA = 2
    MANIFEST = 3
    JOURNAL = 4
    SEAL = 5


class Location(NamedTuple):
    """Where a record lives: pack id (16 hex), offset of its header, length with its header."""

    pack: str
    offset: int
    length: int


@dataclass(frozen=True)
class Record:
    """One decoded record (its CRCs already verified)."""

    type: RecordType
    digest: bytes
    payload: bytes
    method: int = 0
    base: bytes | None = None
    depth: int = 0


def encode_header(record: Record) -> bytes:
    """The 84-byte header of ``record`` (checks what a header cannot hold)."""
    digest = check_digest(record.digest) if record.type != RecordType.SEAL else _ZERO
    base = check_digest(record.base) if record.base is not None else _ZERO
    if (record.type == RecordType.DELTA) != (record.base is not None and record.depth > 0):
        raise ValueError("a delta record, and only one, has a base digest and a depth >= 1")
    if not 0 <= record.method <= 255 or not 0 <= record.depth <= 255:
        raise ValueError(f"method {record.method} or depth {record.depth} out of range")
    size = len(record.payload)
    if size > 0xFFFFFFFF:
        raise ValueError(f"payload of {size} bytes does not fit a record")
    head = _HEADER.pack(
        RECORD_MAGIC, FORMAT_VERSION, record.type, record.method, record.depth, size, digest, base,
        zlib.crc32(record.payload),
    )
    return head + _CRC.pack(zlib.crc32(head))


def _parse_header(buf: bytes | memoryview, offset: int = 0) -> tuple[Record, int, int] | None:
    """(record without payload, payload length, payload CRC) of a header whose CRC holds, else None."""
    if len(buf) - offset < HEADER_SIZE:
        return None
    head = buf[offset:offset + _HEADER.size]
    if _CRC.unpack_from(buf, offset + _HEADER.size)[0] != zlib.crc32(head):
        return None
    magic, version, kind, method, depth, size, digest, base, payload_crc = _HEADER.unpack(head)
    if magic != RECORD_MAGIC or version != FORMAT_VERSION or kind not in RecordType._value2member_map_:
        return None
    kind = RecordType(kind)
    record = Record(kind, bytes(digest), b"", method, bytes(base) if kind == RecordType.DELTA else None, depth)
    return record, size, payload_crc


def decode_record(buf: bytes | memoryview, digest: bytes) -> Record:
    """Decode one whole record read from a location named ``digest``: every CRC, the length and the
    digest must agree, else :class:`CorruptChunkError` (naming ``digest``)."""
    parsed = _parse_header(buf)
    if parsed is None:
        raise CorruptChunkError(digest, "pack record header is damaged")
    record, size, payload_crc = parsed
    if len(buf) != HEADER_SIZE + size:
        detail = f"pack record holds {size} payload bytes, its location {len(buf) - HEADER_SIZE}"
        raise CorruptChunkError(digest, detail)
    payload = bytes(buf[HEADER_SIZE:])
    if zlib.crc32(payload) != payload_crc:
        raise CorruptChunkError(digest, "pack record payload fails its checksum")
    if record.digest != digest:
        raise CorruptChunkError(digest, f"pack record at this location is {record.digest.hex()}")
    return Record(record.type, record.digest, payload, record.method, record.base, record.depth)


def pack_path(root: Path, pack: str) -> Path:
    """The file of pack ``pack`` under a store ``root``."""
    return root / "packs" / pack[:2] / f"{pack}{SUFFIX}"


def list_packs(root: Path) -> list[str]:
    """Ids of every pack file under ``root`` (sorted)."""
    folder = root / "packs"
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob(f"??/*{SUFFIX}") if len(p.stem) == 16 and p.stem[:2] == p.parent.name)


# ---- scanning and recovery ------------------------------------------------------------------


@dataclass
class ScanReport:
    """What :func:`scan` found in one pack."""

    size: int = 0
    records: int = 0  # intact records, seal excluded
    end: int = FILE_HEADER_SIZE  # end of the last intact record: where a torn tail starts
    sealed: bool = False
    # offset, and the record (without payload) when its header held
    damaged: list[tuple[int, Record | None]] = field(default_factory=list)


def scan(root: Path, pack: str, report: ScanReport | None = None) -> Iterator[tuple[Location, Record]]:
    """Yield every intact record of a pack with its location, in file order (seal excluded).

    A record with an intact header but a damaged payload is skipped by its length; after a damaged
    header the scan resumes at the next offset where an intact header starts. Both are listed in
    ``report.damaged``.
    """
    report = report if report is not None else ScanReport()
    with open(pack_path(root, pack), "rb") as f:
        size = report.size = os.fstat(f.fileno()).st_size
        if size <= FILE_HEADER_SIZE:
            return
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            yield from _scan_buffer(mm, pack, report)


def _scan_buffer(mm: mmap.mmap, pack: str, report: ScanReport) -> Iterator[tuple[Location, Record]]:
    offset, size, lost = FILE_HEADER_SIZE, len(mm), None
    while offset < size:
        parsed = _parse_header(mm, offset)
        if parsed is None:
            lost = offset if lost is None else lost
            offset = mm.find(RECORD_MAGIC, offset + 1)
            offset = size if offset < 0 else offset
            continue
        if lost is not None:
            report.damaged.append((lost, None))
            lost = None
        record, length, crc = parsed
        end = offset + HEADER_SIZE + length
        if end > size:  # a header whose payload never reached the disk: the torn tail
            report.damaged.append((offset, record))
            break
        payload = mm[offset + HEADER_SIZE:end]
        if zlib.crc32(payload) != crc:
            report.damaged.append((offset, record))
        elif record.type == RecordType.SEAL:
            report.sealed, report.end = True, end
        else:
            report.records += 1
            report.end = end
            full = Record(record.type, record.digest, payload, record.method, record.base, record.depth)
            yield Location(pack, offset, end - offset), full
        offset = end
    if lost is not None:
        report.damaged.append((lost, None))


def is_sealed(root: Path, pack: str) -> bool:
    """True if the pack ends with its intact seal record (one read of its last bytes)."""
    with open(pack_path(root, pack), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < FILE_HEADER_SIZE + SEAL_SIZE:
            return False
        tail = os.pread(f.fileno(), SEAL_SIZE, size - SEAL_SIZE)
    parsed = _parse_header(tail)
    if parsed is None or parsed[0].type != RecordType.SEAL or parsed[1] != _SEAL.size:
        return False
    payload = tail[HEADER_SIZE:]
    return zlib.crc32(payload) == parsed[2] and _SEAL.unpack(payload)[1] == size - SEAL_SIZE


@dataclass
class Recovery:
    """What :func:`recover` did to one pack."""

    pack: str
    skipped: bool = False  # another process is writing it
    cut_bytes: int = 0  # torn tail removed
    removed: bool = False  # held no record at all (torn before its first record): deleted
    report: ScanReport | None = None


def recover(root: Path, pack: str, fsync: bool = True) -> Recovery:
    """Cut a torn tail off an unsealed pack nobody is writing, then seal it.

    Intact records are never removed: only bytes after the last intact record go. A pack that
    holds no intact record and no more than its file header is deleted.
    """
    path = pack_path(root, pack)
    result = Recovery(pack)
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            result.skipped = True
            return result
        if is_sealed(root, pack):
            return result
        report = result.report = ScanReport()
        for _ in scan(root, pack, report):
            pass
        if report.records == 0 and report.size <= FILE_HEADER_SIZE:
            path.unlink()
            result.removed = True
            return result
        if report.end < report.size:
            os.ftruncate(fd, report.end)
            result.cut_bytes = report.size - report.end
        _write_all(fd, _seal_record(report.records, report.end), report.end)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync and result.removed:
        fsync_dir(path.parent)
    return result


def _seal_record(count: int, offset: int) -> bytes:
    payload = _SEAL.pack(count, offset)
    return encode_header(Record(RecordType.SEAL, _ZERO, payload)) + payload


# ---- writing --------------------------------------------------------------------------------


class _OpenPack:
    """A pack being written: its descriptor (holding the flock), id and size."""

    def __init__(self, root: Path) -> None:
        self.id = secrets.token_hex(8)
        path = pack_path(root, self.id)
        self.new_name = True  # its folder entry (and maybe the folder) is not durable yet
        self.new_folder = not path.parent.is_dir()
        self.dirty = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self.folder = path.parent
        self.records = 0
        self.size = 0
        self.sealed = False
        self.append(_FILE_HEADER.pack(FILE_MAGIC, FORMAT_VERSION, 0, bytes.fromhex(self.id)))

    def append(self, data: bytes | Sequence[bytes]) -> int:
        """Write at the end; on failure the pack is cut back to where it was. Returns the offset."""
        offset = self.size
        try:
            self.size = _write_all(self.fd, data, offset)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, offset)
            raise
        return offset


class PackWriter:
    """Appends records to packs under ``root``; :meth:`flush` makes them durable together.

    Thread-safe: appends are serialised, and concurrent flushes share one barrier (a record
    appended before a ``flush()`` call is durable when that call returns, whichever thread's
    barrier covered it).
    """

    def __init__(self, root: str | Path, max_pack_size: int = DEFAULT_MAX_PACK_SIZE, fsync: bool = True) -> None:
        if not FILE_HEADER_SIZE + SEAL_SIZE < max_pack_size <= MAX_PACK_SIZE_LIMIT:
            raise ValueError(f"max_pack_size {max_pack_size} is outside ({FILE_HEADER_SIZE + SEAL_SIZE}, 4 GiB]")
        self.root = Path(root)
        self.max_pack_size = max_pack_size
        self._fsync = fsync
        self._lock = threading.Lock()  # the open pack and the pending lists
        self._flush_lock = threading.Lock()  # one barrier at a time; only flush closes descriptors
        self._open: _OpenPack | None = None
        self._pending: list[Location] = []
        self._dirty: list[_OpenPack] = []  # packs written since the last flush (sealed ones too)

    def append(self, record: Record) -> Location:
        """Append one record (not durable until :meth:`flush`); returns its future location."""
        return self.append_many([record])[0]

    def append_many(self, records: Sequence[Record]) -> list[Location]:
        """Append records in order, each whole in one pack (not durable until :meth:`flush`)."""
        encoded = [(encode_header(r), r.payload) for r in records]
        locations = []
        with self._lock:
            for head, payload in encoded:
                length = len(head) + len(payload)
                pack = self._pack_for(length)
                offset = pack.append((head, payload))
                pack.records += 1
                if not pack.dirty:
                    pack.dirty = True
                    self._dirty.append(pack)
                locations.append(Location(pack.id, offset, length))
            self._pending += locations
        return locations

    def _pack_for(self, length: int) -> _OpenPack:
        pack = self._open
        if pack is not None and pack.records and pack.size + length + SEAL_SIZE > self.max_pack_size:
            self._seal(pack)
            pack = None
        if pack is None:
            pack = self._open = _OpenPack(self.root)
        return pack

    def _seal(self, pack: _OpenPack) -> None:
        pack.append(_seal_record(pack.records, pack.size))
        pack.sealed = True
        if not pack.dirty:
            pack.dirty = True
            self._dirty.append(pack)
        self._open = None  # its descriptor stays open until the next flush has synced it

    def flush(self) -> list[Location]:
        """Make every record appended so far durable; returns the locations that became durable
        in this call, in append order (those covered by a concurrent flush are its)."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                dirty, self._dirty = self._dirty, []
                for pack in dirty:
                    pack.dirty = False
                # only packs sealed before this snapshot: one sealed after it is synced (and
                # closed) by the next flush
                retired = [pack for pack in dirty if pack.sealed]
            if self._fsync:
                for pack in dirty:
                    os.fdatasync(pack.fd)
                folders = {p.folder for p in dirty if p.new_name} | {p.folder.parent for p in dirty if p.new_folder}
                for folder in sorted(folders, reverse=True):
                    fsync_dir(folder)
            for pack in dirty:
                pack.new_name = pack.new_folder = False
            for pack in retired:
                os.close(pack.fd)
            return pending

    def close(self) -> None:
        """Seal the open pack and make everything durable; the writer may be used again after."""
        with self._lock:
            if self._open is not None and self._open.records:
                self._seal(self._open)
        self.flush()

    @property
    def open_pack(self) -> str | None:
        """Id of the pack being appended to, if any."""
        pack = self._open
        return pack.id if pack is not None else None


# ---- reading --------------------------------------------------------------------------------


class _Handle:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.evicted = False


class PackReader:
    """Reads records by location with ``pread`` on cached descriptors (a bounded LRU).

    Thread-safe: a descriptor evicted while another thread reads through it is closed by the
    last reader.
    """

    def __init__(self, root: str | Path, max_open: int = 64, max_record_size: int = HEADER_SIZE + 0xFFFFFFFF) -> None:
        self.root = Path(root)
        self.max_open = max(1, max_open)
        self.max_record_size = max_record_size
        self._lock = threading.Lock()
        self._handles: OrderedDict[str, _Handle] = OrderedDict()

    def read(self, location: Location, digest: bytes) -> Record:
        """The record at ``location``, which must be an intact record named ``digest``.

        :class:`CorruptChunkError` when it is not (or its pack is gone or too short, or the
        location's length is impossible: nothing is allocated for it).
        """
        if not HEADER_SIZE <= location.length <= self.max_record_size:
            raise CorruptChunkError(digest, f"a record of {location.length} bytes is impossible here")
        try:
            handle = self._acquire(location.pack)
        except FileNotFoundError:
            raise CorruptChunkError(digest, f"pack {location.pack} is missing") from None
        try:
            buf = os.pread(handle.fd, location.length, location.offset)
        finally:
            self._release(handle)
        if len(buf) != location.length:
            raise CorruptChunkError(digest, f"pack {location.pack} ends inside the record")
        return decode_record(buf, digest)

    def _acquire(self, pack: str) -> _Handle:
        with self._lock:
            handle = self._handles.get(pack)
            if handle is None:
                handle = self._handles[pack] = _Handle(os.open(pack_path(self.root, pack), os.O_RDONLY))
                while len(self._handles) > self.max_open:
                    _, old = self._handles.popitem(last=False)
                    old.evicted = True
                    if not old.users:
                        os.close(old.fd)
            else:
                self._handles.move_to_end(pack)
            handle.users += 1
            return handle

    def _release(self, handle: _Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.evicted and not handle.users:
                os.close(handle.fd)

    def forget(self, pack: str) -> None:
        """Drop the cached descriptor of ``pack`` (after it was truncated or removed)."""
        with self._lock:
            handle = self._handles.pop(pack, None)
            if handle is not None:
                handle.evicted = True
                if not handle.users:
                    os.close(handle.fd)

    def close(self) -> None:
        """Close every cached descriptor not in use (those in use close when their read ends)."""
        for pack in list(self._handles):
            self.forget(pack)


def _write_all(fd: int, data: bytes | Sequence[bytes], offset: int) -> int:
    """pwrite every byte of ``data`` at ``offset``; returns the offset after it."""
    parts = [memoryview(data)] if isinstance(data, bytes | bytearray) else [memoryview(b) for b in data]
    while parts:
        written = os.pwritev(fd, parts, offset)
        offset += written
        while parts and written >= parts[0].nbytes:
            written -= parts[0].nbytes
            parts.pop(0)
        if parts and written:
            parts[0] = parts[0][written:]
    return offset


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
