"""Reach a running server's stored chunks on disk, in either layout, to damage them the way a
failing disk or an operator would (tests of self-healing, integrity errors and checks).

``packs`` (the default for a new data dir): chunk records in ``packs/``, located through the
location index in Redis/Valkey, damage marks in ``damaged/``. ``files``: one file per chunk in
``chunks/ab/cd/``, damage marks in ``chunks/.damaged/``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import redis

from cas.pack import HEADER_SIZE, RecordType, list_packs, pack_path, scan
from cas.packstore import IndexEntry
from cas.store import LocalChunkStore
from service.metadata.keys import LOCATION_BUCKET_BYTES, location_bucket
from service.metadata.locations import RedisLocationIndex

__all__ = ["damage_mark", "flip_at", "flip_chunk", "index_entries", "indexed", "indexed_records", "lose_chunk",
           "read_frame", "staged_leftovers", "store_format", "stored_bytes"]


def store_format(data_dir: Path) -> str:
    """The chunk layout of a data dir: "packs" or "files"."""
    return "packs" if (data_dir / "packs").is_dir() else "files"


def _span(data_dir: Path, d: bytes) -> tuple[Path, int, int]:
    """(file, offset, length) of the newest intact stored frame of ``d``."""
    if store_format(data_dir) == "files":
        path = LocalChunkStore(data_dir / "chunks", fsync=False).path_for(d)
        return path, 0, path.stat().st_size
    found = None
    for pack in list_packs(data_dir):
        for location, record in scan(data_dir, pack):
            if record.digest == d and record.type in (RecordType.CHUNK, RecordType.DELTA):
                found = (pack_path(data_dir, pack), location.offset + HEADER_SIZE, location.length - HEADER_SIZE)
    assert found is not None, f"no stored record of {d.hex()}"
    return found


def read_frame(data_dir: Path, d: bytes) -> bytes:
    """The newest intact stored frame of ``d``."""
    path, offset, length = _span(data_dir, d)
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def flip_chunk(data_dir: Path, d: bytes, at: int | None = None) -> tuple[Path, int]:
    """Flip one bit of ``d``'s stored frame, in place: byte ``at`` (negative: from the frame's
    end; default the middle, in the payload). Returns (file, position) for :func:`flip_at`."""
    path, offset, length = _span(data_dir, d)
    position = offset + (length // 2 if at is None else at % length)
    flip_at(path, position)
    return path, position


def flip_at(path: Path, position: int) -> None:
    """Flip one bit of byte ``position`` of ``path`` (flipping it twice restores it)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x01]))


def lose_chunk(server: object, d: bytes) -> None:
    """Make ``d`` vanish from the store: its file (files) or its location-index entry (packs)."""
    data_dir: Path = server.data_dir  # type: ignore[attr-defined]
    if store_format(data_dir) == "files":
        LocalChunkStore(data_dir / "chunks", fsync=False).path_for(d).unlink()
        return
    client = redis.Redis.from_url(server.redis_url)  # type: ignore[attr-defined]
    try:
        assert client.hdel(location_bucket(server.prefix, d), d[LOCATION_BUCKET_BYTES:]) == 1  # type: ignore[attr-defined]
    finally:
        client.close()


def damage_mark(data_dir: Path, d: bytes) -> Path:
    """The file that marks ``d`` damaged or missing (it exists while the mark stands)."""
    if store_format(data_dir) == "files":
        return data_dir / "chunks" / ".damaged" / d.hex()
    return data_dir / "damaged" / d.hex()


def indexed(server: object) -> set[bytes]:
    """Every digest the location index of a packs server names."""
    client = redis.Redis.from_url(server.redis_url)  # type: ignore[attr-defined]
    try:
        return {d for d, _ in RedisLocationIndex(client, server.prefix).iterate()}  # type: ignore[attr-defined]
    finally:
        client.close()


def index_entries(server: object, digests: list[bytes]) -> list[IndexEntry | None]:
    """The location-index entries of ``digests`` on a packs server (kind, delta base and depth)."""
    client = redis.Redis.from_url(server.redis_url)  # type: ignore[attr-defined]
    try:
        return RedisLocationIndex(client, server.prefix).get_many(digests)  # type: ignore[attr-defined]
    finally:
        client.close()


def indexed_records(server: object) -> dict[str, str]:
    """"<pack>:<offset>" -> SHA-256 of the record's bytes, for every record the location index of a
    packs server names: the stored state of its chunks (records no index entry names are inert)."""
    client = redis.Redis.from_url(server.redis_url)  # type: ignore[attr-defined]
    try:
        entries = [e for _, e in RedisLocationIndex(client, server.prefix).iterate()]  # type: ignore[attr-defined]
    finally:
        client.close()
    state = {}
    for e in entries:
        with open(pack_path(server.data_dir, e.pack), "rb") as f:  # type: ignore[attr-defined]
            state[f"{e.pack}:{e.offset}"] = hashlib.sha256(os.pread(f.fileno(), e.length, e.offset)).hexdigest()
    return state


def staged_leftovers(server: object) -> list[object]:
    """Upload data written but never published: temp files in ``chunks/.staging`` (files), or pack
    records the location index does not name (packs: a discarded batch's records stay unindexed)."""
    data_dir: Path = server.data_dir  # type: ignore[attr-defined]
    if store_format(data_dir) == "files":
        return list((data_dir / "chunks" / ".staging").iterdir())
    records = {r.digest for pack in list_packs(data_dir) for _, r in scan(data_dir, pack)}
    return sorted(records - indexed(server))


def stored_bytes(data_dir: Path) -> int:
    """Bytes of every stored chunk file (files) or pack (packs), temp files left out."""
    folder = data_dir / ("packs" if store_format(data_dir) == "packs" else "chunks")
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and ".staging" not in p.parts)
