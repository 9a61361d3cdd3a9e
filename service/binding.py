"""Binding a metadata store to its chunk store: one store id, written in both on first start.

The data dir holds the chunk and manifest files; Redis/Valkey (under the key prefix) holds the
index that names them. Pointed at each other by mistake, a server would tell clients that chunks
exist which are not on its disk. So the first start writes a random store id into the data dir
(``<data_dir>/STORE_ID``) and into the metadata (``P:store-id``), and every later start compares
them before serving anything:

=====================  ======================  ==================================================
data dir               metadata                outcome
=====================  ======================  ==================================================
id A                   id A                    start
id A                   id B                    refuse: the two belong to different stores
none, empty            id B                    refuse: a fresh data dir for a populated store
any                    no id, has data         refuse, unless the data dir has data and no id
                                               either (a store from before binding: adopt it)
has data               no id, empty            refuse: ``stratus admin rebuild-index`` first
id A or none, empty    no id, empty            bind (write the id where it is missing)
=====================  ======================  ==================================================

A refusal writes nothing (the one exception: two servers binding one new store at the same moment).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from cas.errors import CasError
from cas.store import ChunkStore
from service.manifests import ManifestStore
from service.metadata import MetadataStore

STORE_ID_FILE = "STORE_ID"


class StoreBindingError(CasError):
    """The data dir and the metadata store do not belong to the same store; the server refuses to start."""


def read_store_id(data_dir: Path) -> str | None:
    """The store id written in ``data_dir``, or None if there is none."""
    try:
        text = (data_dir / STORE_ID_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def write_store_id(data_dir: Path, store_id: str) -> None:
    """Write the id file atomically and durably (temp file, fsync, rename, fsync the folder)."""
    temp = data_dir / f".{STORE_ID_FILE}.{os.getpid()}.tmp"
    with open(temp, "w") as f:
        f.write(store_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, data_dir / STORE_ID_FILE)
    fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _has_chunks(stores: tuple[ChunkStore | ManifestStore, ...]) -> bool:
    return any(not store.is_empty() for store in stores)


async def bind_store(data_dir: Path, metadata: MetadataStore, stores: tuple[ChunkStore | ManifestStore, ...]) -> str:
    """Check (or create) the binding of ``data_dir`` to ``metadata``; returns the store id.

    Raises :class:`StoreBindingError`, with one line naming both sides and what to do, whenever
    the table in the module docstring says refuse.
    """
    where = f"metadata prefix {metadata.prefix!r}"
    disk_id, meta_id = read_store_id(data_dir), await metadata.store_id()
    if disk_id and meta_id:
        if disk_id != meta_id:
            raise StoreBindingError(
                f"data dir {data_dir} belongs to store {disk_id} but {where} belongs to store {meta_id}; "
                "start with the data dir and metadata (--redis-url, STRATUS_REDIS_PREFIX) of one store"
            )
        return disk_id
    disk_data = _has_chunks(stores)
    if meta_id:
        raise StoreBindingError(
            f"data dir {data_dir} has no store id{' but holds chunks' if disk_data else ''} while {where} "
            f"belongs to store {meta_id}; point --data-dir at the data dir of store {meta_id}"
        )
    meta_data = await metadata.has_data()
    if meta_data and (disk_id or not disk_data):
        raise StoreBindingError(
            f"{where} holds data but no store id, and data dir {data_dir} "
            f"{'belongs to store ' + disk_id if disk_id else 'is empty'}; it is not this metadata's "
            "data dir: point --data-dir at the right one, or use another key prefix"
        )
    if disk_data and not meta_data:
        raise StoreBindingError(
            f"data dir {data_dir} holds chunks (store {disk_id or 'without an id'}) but {where} is empty; "
            "the index must be rebuilt from the data dir before this server can serve it: "
            f"`stratus admin rebuild-index --data-dir {data_dir}` with the same --redis-url and prefix"
        )
    store_id = disk_id or str(uuid.uuid4())
    if not disk_id:
        write_store_id(data_dir, store_id)
    winner = await metadata.claim_store_id(store_id)
    if winner != store_id:  # another server bound this metadata at the same moment
        raise StoreBindingError(
            f"data dir {data_dir} belongs to store {store_id} but {where} belongs to store {winner}; "
            "start with the data dir and metadata of one store"
        )
    return store_id
