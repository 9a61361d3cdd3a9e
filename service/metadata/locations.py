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

Garbage collection (service/gc.py) condemns entries in ``P:cond:{hhhh}`` (same hash tag as the
bucket); :meth:`RedisLocationIndex.claim_many` (a writer relying on an indexed record) takes them
off, and :meth:`RedisLocationIndex.drop_condemned` removes only entries still condemned. Both are
scripts on one bucket, so a claim and a drop of one digest never interleave. Repacking switches
entries with :meth:`RedisLocationIndex.switch_many` (compare-and-set on the whole entry).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import redis

from cas.packstore import IndexEntry
from service.metadata import scripts as lua
from service.metadata.keys import (
    LOCATION_BUCKET_BYTES,
    condemned_bucket,
    condemned_pattern,
    location_bucket,
    location_pattern,
    manifest_index_prefix,
)

_SCAN_BATCH = 512


class RedisLocationIndex:
    """Digest -> :class:`IndexEntry` in Redis/Valkey under ``prefix``; safe to use from many threads."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self._redis = client
        self.prefix = prefix
        self._claim = client.register_script(lua.LOCATION_CLAIM)
        self._drop = client.register_script(lua.LOCATION_DROP)
        self._switch = client.register_script(lua.LOCATION_SWITCH)

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

    def _by_bucket(self, digests: Sequence[bytes]) -> dict[bytes, list[int]]:
        groups: dict[bytes, list[int]] = defaultdict(list)
        for i, d in enumerate(digests):
            groups[d[:LOCATION_BUCKET_BYTES]].append(i)
        return groups

    def claim_many(self, digests: Sequence[bytes]) -> list[bool]:
        """Take the digests off the condemned marks; per digest, True if it is indexed (one round trip).

        A writer calls this before it names a record it did not write (already indexed) or uses one
        as a delta base; False means a collection removed the entry, so the writer must not rely on it.
        """
        groups = self._by_bucket(digests)
        if not groups:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for where in groups.values():
            d0 = digests[where[0]]
            self._claim(keys=[self._key(d0), condemned_bucket(self.prefix, d0)],
                        args=[digests[i][LOCATION_BUCKET_BYTES:] for i in where], client=pipe)
        found = [False] * len(digests)
        for where, flags in zip(groups.values(), pipe.execute(), strict=True):
            for i, flag in zip(where, flags, strict=True):
                found[i] = bool(flag)
        return found

    def condemn_many(self, digests: Sequence[bytes], epoch: int) -> None:
        """Mark the entries of ``digests`` as condemned by ``epoch``."""
        groups = self._by_bucket(digests)
        pipe = self._redis.pipeline(transaction=False)
        for where in groups.values():
            d0 = digests[where[0]]
            pipe.hset(condemned_bucket(self.prefix, d0),
                      mapping={digests[i][LOCATION_BUCKET_BYTES:]: epoch for i in where})
        if groups:
            pipe.execute()

    def drop_condemned(self, digests: Sequence[bytes], epoch: int) -> list[tuple[bytes, IndexEntry]]:
        """Remove the entries of ``digests`` still condemned by ``epoch``; returns those removed."""
        groups = self._by_bucket(digests)
        if not groups:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for where in groups.values():
            d0 = digests[where[0]]
            self._drop(keys=[self._key(d0), condemned_bucket(self.prefix, d0)],
                       args=[epoch, *(digests[i][LOCATION_BUCKET_BYTES:] for i in where)], client=pipe)
        dropped = []
        for where, entries in zip(groups.values(), pipe.execute(), strict=True):
            for i, raw in zip(where, entries, strict=True):
                if raw:
                    dropped.append((digests[i], IndexEntry.from_bytes(raw)))
        return dropped

    def clear_condemned(self) -> None:
        """Forget every condemned mark (resurrects all: always safe)."""
        pipe = self._redis.pipeline(transaction=False)
        for key in self._redis.scan_iter(match=condemned_pattern(self.prefix), count=1000):
            pipe.delete(key)  # one key per command: the buckets live on different cluster slots
        pipe.execute()

    def switch_many(self, moves: Sequence[tuple[bytes, IndexEntry, IndexEntry]]) -> list[bool]:
        """Point each digest at its new entry only if it still holds the old one (compare-and-set)."""
        groups = self._by_bucket([d for d, _, _ in moves])
        if not groups:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for where in groups.values():
            args = []
            for i in where:
                d, old, new = moves[i]
                args += [d[LOCATION_BUCKET_BYTES:], old.to_bytes(), new.to_bytes()]
            self._switch(keys=[self._key(moves[where[0]][0])], args=args, client=pipe)
        done = [False] * len(moves)
        for where, flags in zip(groups.values(), pipe.execute(), strict=True):
            for i, flag in zip(where, flags, strict=True):
                done[i] = bool(flag)
        return done

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
