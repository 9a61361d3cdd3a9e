"""Maintenance against a stopped server's data dir (``admin rebuild-index``, ``admin migrate``).

Both run in the CLI's process, never as an RPC: nothing may commit while they work. They hold the
data dir exactly as a server would: its lock (DataDirBusyError while a server runs on it) with an
external Redis/Valkey, or, without ``redis_url``, the embedded Valkey that they start themselves
(it takes the same lock).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis
import redis.asyncio as aioredis

from service.config import ServerConfig
from service.metadata import MetadataStore
from service.metadata.locations import RedisLocationIndex, named_index


@dataclass(frozen=True)
class OfflineMetadata:
    """The metadata of a stopped server's store, and a maker of its pack location indexes."""

    metadata: MetadataStore
    index: Callable[[str], RedisLocationIndex]  # "chunks" or "manifests"


@contextlib.asynccontextmanager
async def offline_metadata(config: ServerConfig) -> AsyncIterator[OfflineMetadata]:
    """The metadata of ``config``'s store, with the data dir held as a server holds it."""
    from service.server import location_client, metadata_client
    from service.valkey import DataDirLock, EmbeddedValkey

    lock: DataDirLock | None = None
    valkey: EmbeddedValkey | None = None
    if config.redis_url:
        lock = DataDirLock(config.data_dir)
        lock.acquire()
        url = config.redis_url
    else:
        valkey = EmbeddedValkey(config.data_dir)
        valkey.start()
        url = valkey.url
    client: aioredis.Redis = metadata_client(url)
    locations: redis.Redis = location_client(url, 4)
    try:
        yield OfflineMetadata(
            MetadataStore(client, prefix=config.redis_prefix),
            lambda name: named_index(locations, config.redis_prefix, name),
        )
    finally:
        locations.close()
        await client.aclose()
        if valkey is not None:
            valkey.stop()
        if lock is not None:
            lock.release()
