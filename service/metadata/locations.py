"""The chunk location index of a pack store in Redis/Valkey (:class:`cas.packstore.LocationIndex`).

Layout (see :func:`service.metadata.keys.location_bucket`): 65,536 HASH buckets, one per first two
bytes of the digest, each its own Redis Cluster hash tag, so the index spreads over every slot and
no command ever touches two buckets. A field is the rest of the digest (30 raw bytes), a value the
binary :meth:`cas.packstore.IndexEntry.to_bytes` (19 bytes, 51 for a delta record): both stay under
the listpack limits of a small hash, which is what keeps the index cheap in memory.

The interface is synchronous: the pack store runs on the repository's worker threads, so the index
uses a blocking client with a small pool of its own (never the event loop's asyncio client). Many
digests are looked up or written with one pipelined round trip. Writes are set-if-absent
(``HSETNX``) unless told to replace, so two uploads racing with one digest keep the first record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import redis

from cas.packstore import IndexEntry
from service.metadata.keys import LOCATION_BUCKET_BYTES, location_bucket, location_pattern, manifest_index_prefix

_SCAN_BATCH = 512


class RedisLocationIndex:
    """Digest -> :class:`IndexEntry` in Redis/Valkey under ``prefix``; safe to use from many threads."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.prefix = prefix

    def _key(self, digest: bytes) -> bytes:
        return location_bucket(self.prefix, digest)

    def get(self, digest: bytes) -> IndexEntry | None:
        """The entry of ``digest``, or None."""
        raw = self._redis.hget(self._key(digest), digest[LOCATION_BUCKET_BYTES:])
        return IndexEntry.from_bytes(raw) if raw else None

    def get_many(self, digests: Sequence[bytes]) -> list[IndexEntry | None]:
        """:meth:`get` for each digest, in one pipelined round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for d in digests:
            pipe.hget(self._key(d), d[LOCATION_BUCKET_BYTES:])
        return [IndexEntry.from_bytes(raw) if raw else None for raw in pipe.execute()] if digests else []

    def put_many(self, entries: Sequence[tuple[bytes, IndexEntry]], replace: bool = False) -> list[bool]:
        """Add entries (one round trip); an existing entry is kept unless ``replace``.

        True where an entry was written (with ``replace``, always)."""
        if not entries:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for d, entry in entries:
            key, field, value = self._key(d), d[LOCATION_BUCKET_BYTES:], entry.to_bytes()
            pipe.hset(key, field, value) if replace else pipe.hsetnx(key, field, value)
        results = pipe.execute()
        return [True] * len(entries) if replace else [bool(r) for r in results]

    def contains_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Whether each digest has an entry, in order (one round trip)."""
        if not digests:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for d in digests:
            pipe.hexists(self._key(d), d[LOCATION_BUCKET_BYTES:])
        return [bool(r) for r in pipe.execute()]

    def buckets(self) -> Iterator[bytes]:
        """The names of the buckets that exist (a SCAN; cost follows the keyspace)."""
        yield from self._redis.scan_iter(match=location_pattern(self.prefix), count=1000)

    def iterate(self) -> Iterator[tuple[bytes, IndexEntry]]:
        """Every (digest, entry), bucket by bucket (a pipelined HGETALL per batch of buckets)."""
        batch: list[bytes] = []
        for key in self.buckets():
            batch.append(key)
            if len(batch) >= _SCAN_BATCH:
                yield from self._read_buckets(batch)
                batch = []
        if batch:
            yield from self._read_buckets(batch)

    def _read_buckets(self, keys: list[bytes]) -> Iterator[tuple[bytes, IndexEntry]]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        for key, fields in zip(keys, pipe.execute(), strict=True):
            head = bytes.fromhex(key[key.rindex(b"{") + 1:key.rindex(b"}")].decode())
            for field, raw in fields.items():
                yield head + field, IndexEntry.from_bytes(raw)

    def memory_bytes(self) -> int:
        """Redis memory of every bucket (``MEMORY USAGE ... SAMPLES 0``, pipelined)."""
        keys = list(self.buckets())
        total = 0
        for i in range(0, len(keys), _SCAN_BATCH):
            pipe = self._redis.pipeline(transaction=False)
            for key in keys[i:i + _SCAN_BATCH]:
                pipe.memory_usage(key, samples=0)
            total += sum(n or 0 for n in pipe.execute())
        return total


def named_index(client: redis.Redis, prefix: str, name: str) -> RedisLocationIndex:
    """The location index ``name`` of a pack store under key prefix ``prefix``: "chunks" (the
    chunk and delta records) or "manifests" (the manifest records, see service/manifests.py)."""
    return RedisLocationIndex(client, prefix if name == "chunks" else manifest_index_prefix(prefix))
