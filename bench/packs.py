"""Pack store vs one-file-per-chunk store, and similarity-delta on a real version history.

Usage: ``python -m bench.packs [--size-mib 128] [--batch 64] [--skip-history] [--skip-append]
[--package flask --releases 2.2.0,2.2.1,...]``

1. Append: the same zstd-3 frames of the mixed dataset (``bench.datasets.MixedStream``) stored,
   fsync on, in batches of ``--batch`` chunks (one durability barrier per batch, as an upload
   stream's flush window does), by ``LocalChunkStore.put_many`` and by ``PackChunkStore.put_many``
   (and by a bare ``PackWriter``): frame MB/s, files and folders created, allocated bytes; then
   every frame read back (``get_frame``, page cache warm) in MB/s; then the pack store reopened
   (index rebuilt from the packs alone) and checked with ``read_data``, in MB/s of frames.
2. History: the 8 flask sdists of ``bench.datasets`` (or ``--package``/``--releases``;
   downloaded once into bench/data/, gunzipped to .tar), chunked with the default parameters.
   Every unique chunk is put into a PackChunkStore with, as delta hints, the previous version's
   chunk covering the same offset and its two neighbours (one store uses the first hint only,
   one keeps the smallest delta of the three); reported: zstd-3 frame bytes, what each store
   keeps (delta chains bounded at depth 4), the same-offset deltas with unbounded chains, the
   data dir on disk (``du``-style allocated bytes) of a pack store and of the file-per-chunk
   store, and a borg-like reference computed in-process (2 MiB average chunks, zstd-3, exact
   dedup; borg itself is not installed here). When /work/shared/tools/similarity_trial.py exists
   it is run on the same files (its dictionary is three neighbouring chunks, not one, and its
   chains are unbounded).

Prints numbers only; no thresholds.
"""

from __future__ import annotations

import argparse
import bisect
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import zstandard

from bench.datasets import MIB, VERSIONS, VERSIONS_PACKAGE, MixedStream, release_versions
from bench.servers import disk_usage
from cas import codec, delta
from cas.chunker import ChunkParams, chunk_bytes, chunk_stream
from cas.digest import digest
from cas.pack import PackWriter, Record, RecordType
from cas.packstore import PackChunkStore
from cas.store import ChunkStore, LocalChunkStore

TRIAL = Path("/work/shared/tools/similarity_trial.py")


def mixed_frames(size: int) -> list[tuple[bytes, bytes]]:
    return [(digest(c.data), codec.encode(c.data)) for c in chunk_stream(MixedStream(size))]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def bench_append(work: Path, size: int, batch: int) -> None:
    frames = mixed_frames(size)
    total = sum(len(f) for _, f in frames)
    print(f"append: {len(frames)} chunks, {total / MIB:.1f} MiB of zstd-3 frames, batches of {batch}, fsync on")
    groups = batches(frames, batch)

    def put_all(store: ChunkStore) -> None:
        for group in groups:
            store.put_many(group)

    def read_all(store: ChunkStore) -> None:
        for d, _ in frames:
            store.get_frame(d, verify=False)

    stores: dict[str, ChunkStore] = {
        "LocalChunkStore (file per chunk)": LocalChunkStore(work / "local"),
        "PackChunkStore (32 MiB packs)": PackChunkStore(work / "packs"),
    }
    for name, store in stores.items():
        seconds = timed(lambda s=store: put_all(s))
        reading = timed(lambda s=store: read_all(s))
        apparent, allocated, files, folders = disk_usage(Path(store.root))  # type: ignore[attr-defined]
        print(f"  {name:34} put {total / MIB / seconds:7.1f} MB/s   get_frame {total / MIB / reading:7.1f} MB/s   "
              f"{files} files, {folders} folders, {allocated / MIB:.1f} MiB allocated ({apparent / MIB:.1f} apparent)")
    packs = stores["PackChunkStore (32 MiB packs)"]
    packs.close()
    start = time.perf_counter()
    reopened = PackChunkStore(packs.root)  # in-memory index: rebuilt by scanning every pack
    rebuild = time.perf_counter() - start
    check = timed(lambda: reopened.check(read_data=True))
    print(f"  {'PackChunkStore open + rebuild_index':34} {total / MIB / rebuild:7.1f} MB/s of packs scanned   "
          f"check --read-data {total / MIB / check:7.1f} MB/s")
    writer = PackWriter(work / "bare")
    records = [[Record(RecordType.CHUNK, d, f, f[3]) for d, f in group] for group in groups]

    def append_all() -> None:
        for group in records:
            writer.append_many(group)
            writer.flush()

    seconds = timed(append_all)
    writer.close()
    print(f"  {'PackWriter append+flush (no index)':34} put {total / MIB / seconds:7.1f} MB/s")


def offsets_and_chunks(path: Path) -> tuple[list[int], list[bytes]]:
    chunks = list(chunk_bytes(path.read_bytes(), ChunkParams()))
    return [c.offset for c in chunks], [c.data for c in chunks]


def bench_history(work: Path, package: str, releases: tuple[str, ...]) -> None:
    versions = release_versions(work, package, releases)
    logical = sum(p.stat().st_size for p in versions.files)
    print(f"history: {versions.source}, {logical / 1e6:.1f} MB logical")
    stores = {  # hints: the previous version's chunk covering the same offset, then its two neighbours
        "same offset": PackChunkStore(work / "history-same", max_candidates=1),
        "best of 3 neighbours": PackChunkStore(work / "history-best3", max_candidates=3),
    }
    put_time = dict.fromkeys(stores, 0.0)
    local = LocalChunkStore(work / "history-local")
    seen: set[bytes] = set()
    plain = unbounded = chunks = deltas = 0
    delta_cpu = plain_cpu = dict_cpu = 0.0
    prev: tuple[list[int], list[bytes]] | None = None
    for path in versions.files:
        offsets, datas = offsets_and_chunks(path)
        items, hints = [], {}
        for off, data in zip(offsets, datas, strict=True):
            d = digest(data)
            if d in seen:
                continue
            seen.add(d)
            chunks += 1
            start = time.perf_counter()
            frame = codec.encode(data)
            plain_cpu += time.perf_counter() - start
            plain += len(frame)
            items.append((d, frame))
            if prev is None:
                unbounded += len(frame)
                continue
            i = max(0, bisect.bisect_right(prev[0], off) - 1)
            base = prev[1][i]
            hints[d] = [digest(prev[1][j]) for j in (i, i - 1, i + 1) if 0 <= j < len(prev[1])]
            deltas += 1
            start = time.perf_counter()
            zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
            dict_cpu += time.perf_counter() - start
            start = time.perf_counter()
            candidate = delta.encode_if_smaller(data, base, 0, len(frame))
            delta_cpu += time.perf_counter() - start
            unbounded += len(candidate) if candidate is not None else len(frame)
        for name, store in stores.items():
            put_time[name] += timed(lambda s=store, items=items, hints=hints: s.put_many(items, hints))
        local.put_many(items)
        prev = (offsets, datas)
    print(f"  unique chunks {chunks}; exact dedup {logical / sum(len(local.get(d)) for d in seen):.2f}x")
    print(f"  zstd-3 frames (one file per chunk today)  {plain / 1e6:7.2f} MB")
    print(f"  same-offset deltas, unbounded chains      {unbounded / 1e6:7.2f} MB  ({unbounded / plain:.2f}x)")
    for name, store in stores.items():
        kept = store.stats().stored_bytes
        depths = [e.depth for _, e in store.index.iterate()]
        print(f"  pack store, {name:20}, depth <= 4 {kept / 1e6:7.2f} MB  ({kept / plain:.2f}x)  "
              f"{sum(1 for n in depths if n)} delta records, deepest {max(depths)}; puts {put_time[name]:.2f} s")
    print(f"  per chunk: zstd-3 encode {plain_cpu / chunks * 1e6:.0f} us, delta encode (dictionary loaded into a "
          f"new context) {delta_cpu / max(1, deltas) * 1e6:.0f} us, ZstdCompressionDict build alone "
          f"{dict_cpu / max(1, deltas) * 1e6:.1f} us")
    best = stores["best of 3 neighbours"]
    for name, root in (("pack store (best of 3)", best.root), ("file-per-chunk store", local.root)):
        apparent, allocated, files, folders = disk_usage(root)
        print(f"  data dir of the {name:22} {allocated / 1e6:7.2f} MB allocated, {apparent / 1e6:.2f} MB apparent, "
              f"{files} files, {folders} folders")
    print(f"  borg-like (2 MiB chunks, zstd-3, dedup)   {borg_like(versions.files) / 1e6:7.2f} MB (frames only)")
    reopened = PackChunkStore(best.root)  # cold base cache
    start = time.perf_counter()
    for d in seen:
        reopened.get(d)
    print(f"  read back every chunk of the best-of-3 store, cold base cache: {time.perf_counter() - start:.2f} s")
    if TRIAL.exists():
        out = subprocess.run([sys.executable, str(TRIAL), *map(str, versions.files)], capture_output=True, text=True)
        print(f"  similarity_trial.py (3-chunk dictionary): {out.stdout.strip() or out.stderr.strip()[-200:]}")


def borg_like(files: list[Path]) -> int:
    params = ChunkParams(min_size=512 * 1024, avg_size=2 * MIB, max_size=8 * MIB)
    cctx = zstandard.ZstdCompressor(level=3)
    seen: set[bytes] = set()
    total = 0
    for path in files:
        for c in chunk_bytes(path.read_bytes(), params):
            d = digest(c.data)
            if d not in seen:
                seen.add(d)
                total += len(cctx.compress(c.data))
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.packs", description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=128, help="mixed data for the append comparison")
    parser.add_argument("--batch", type=int, default=64, help="chunks per durability barrier")
    parser.add_argument("--skip-append", action="store_true")
    parser.add_argument("--skip-history", action="store_true")
    parser.add_argument("--package", default=VERSIONS_PACKAGE, help="PyPI project of the version history")
    parser.add_argument("--releases", default=",".join(VERSIONS), help="its versions, oldest first, comma-separated")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-packs-"))
    try:
        if not args.skip_append:
            bench_append(work, args.size_mib * MIB, args.batch)
        if not args.skip_history:
            bench_history(work, args.package, tuple(args.releases.split(",")))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
