"""The metadata side of garbage collection: condemned chunks of each namespace, and the GC state.

A collection (service/gc.py) first *condemns* the chunks of a namespace's chunk index that no
version references: it records them with its epoch in ``P:{ns}:condemned``. Every script through
which a writer relies on a chunk of the index (FindMissingChunks, PutChunks' index update, the
commit) takes the digests it touches off that hash in the same atomic step (``resurrect.lua``).
After the grace period the collection *sweeps*: one script per slice drops from the index each
chunk still condemned by its epoch. So a chunk a writer touched after it was condemned is never
swept by that collection, and a commit after a sweep finds the chunk missing (the client uploads it
again), never a chunk that is gone.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from service.metadata import scripts as lua
from service.metadata.keys import _Keys, gc_lock, gc_state

_SLICE = 10_000
_RENEW = """if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0"""
_RELEASE = """if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0"""


class CondemnedChunks:
    """Condemn, sweep and resurrect namespace chunks; the GC state and lock (see the module doc)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self._redis = redis
        self.prefix = prefix
        self._sweep = redis.register_script(lua.SWEEP_CHUNKS)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._token = secrets.token_hex(8)

    def _keys(self, ns: str) -> _Keys:
        return _Keys(self.prefix, ns)

    async def chunk_namespaces(self) -> list[str]:
        """Every namespace with a chunk index (it may have no committed path yet)."""
        found = set()
        async for key in self._redis.scan_iter(match=f"{self.prefix}:{{*}}:chunks", count=1000):
            found.add(key.decode()[len(self.prefix) + 2 : -len("}:chunks")])
        return sorted(found)

    async def chunk_batches(self, ns: str) -> AsyncIterator[list[bytes]]:
        """The digests of ``ns``'s chunk index, in batches (a HSCAN: may repeat a digest)."""
        batch: list[bytes] = []
        async for field, _ in self._redis.hscan_iter(self._keys(ns).chunks, count=1000):
            batch.append(field)
            if len(batch) >= 1000:
                yield batch
                batch = []
        if batch:
            yield batch

    async def condemn(self, ns: str, digests: Sequence[bytes], epoch: int) -> None:
        """Mark ``digests`` of ``ns``'s chunk index as condemned by ``epoch``."""
        key = self._keys(ns).condemned
        for start in range(0, len(digests), _SLICE):
            await self._redis.hset(key, mapping={d: epoch for d in digests[start:start + _SLICE]})

    async def condemned(self, ns: str, epoch: int) -> list[bytes]:
        """The digests of ``ns`` still condemned by ``epoch``."""
        out = []
        async for field, value in self._redis.hscan_iter(self._keys(ns).condemned, count=1000):
            if int(value) == epoch:
                out.append(field)
        return out

    async def sweep(self, ns: str, digests: Sequence[bytes], epoch: int) -> list[bytes]:
        """Drop from ``ns``'s chunk index the digests still condemned by ``epoch`` (atomically per
        slice); returns those dropped. Chunk views of the namespace lose them too."""
        keys = self._keys(ns)
        swept: list[bytes] = []
        for start in range(0, len(digests), _SLICE):
            blob = await self._sweep(
                keys=[keys.chunks, keys.stats, keys.condemned], args=[b"".join(digests[start:start + _SLICE]), epoch]
            )
            swept += [blob[i:i + 32] for i in range(0, len(blob), 32)]
        if swept:
            await self._drop_from_views(keys, swept)
        return swept

    async def _drop_from_views(self, keys: _Keys, digests: list[bytes]) -> None:
        """A view only narrows what its grantee sees; a chunk gone from the namespace leaves it too."""
        async for view in self._redis.scan_iter(match=keys.views_pattern(), count=1000):
            for start in range(0, len(digests), _SLICE):
                await self._redis.hdel(view, *digests[start:start + _SLICE])

    async def clear(self, ns: str) -> None:
        """Forget every condemned mark of ``ns`` (resurrects all: always safe)."""
        await self._redis.delete(self._keys(ns).condemned)

    # ---- state and lock ------------------------------------------------------------------------

    async def state(self) -> dict[str, int]:
        """The GC state hash as integers (empty before the first collection)."""
        raw = await self._redis.hgetall(gc_state(self.prefix))
        return {k.decode(): int(v) for k, v in raw.items()}

    async def set_state(self, **fields: int) -> None:
        """Set fields of the GC state hash."""
        await self._redis.hset(gc_state(self.prefix), mapping={k: int(v) for k, v in fields.items()})

    async def clear_state(self, *fields: str) -> None:
        """Remove fields of the GC state hash."""
        await self._redis.hdel(gc_state(self.prefix), *fields)

    async def add_to_state(self, name: str, amount: int) -> int:
        """Add to a counter of the GC state hash; returns the new value."""
        return int(await self._redis.hincrby(gc_state(self.prefix), name, int(amount)))

    async def next_epoch(self) -> int:
        """A new, never used epoch number."""
        return await self.add_to_state("epoch", 1)

    async def lock(self, ttl_ms: int) -> bool:
        """Take the store-wide GC lock for ``ttl_ms`` (renew it with :meth:`renew`)."""
        return bool(await self._redis.set(gc_lock(self.prefix), self._token, nx=True, px=ttl_ms))

    async def renew(self, ttl_ms: int) -> bool:
        """Extend the lock this object holds; False if it was lost."""
        return bool(await self._renew(keys=[gc_lock(self.prefix)], args=[self._token, ttl_ms]))

    async def unlock(self) -> None:
        """Release the lock if this object holds it."""
        await self._release(keys=[gc_lock(self.prefix)], args=[self._token])
