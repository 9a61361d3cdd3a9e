"""Benchmark datasets, built in a temporary folder (never committed) from fixed seeds.

* ``mixed``: alternating 1 MiB blocks of incompressible bytes (BLAKE3 XOF, so every block is
  unique and generation costs almost nothing) and log-like text that zstd-3 shrinks ~4x (the
  generator of ``bench.cas_throughput``). :class:`MixedStream` produces it without holding it, so
  the 4 GiB memory run never exists on disk.
* edits on a file in place: scattered 4 KiB overwrites, a 1-byte insertion at the front, an append.
* ``versions``: successive sdists of one real project (``pip download``), gunzipped to .tar so that
  dedup can see the unchanged files inside; cached in ``bench/data/``. A synthetic evolving source
  tree stands in when the download fails, and the report says so.
* ``history``: the same for a bigger project (django 4.2.0..4.2.7, hundreds of MB of tar); no
  synthetic stand-in: when the download fails the group fails and says so.
* ``tree``: many small source-like files plus a few large mixed files, then 1% of them changed.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import blake3

from bench.cas_throughput import _text_pool

MIB = 1024 * 1024
BLOCK = MIB
DATA_DIR = Path(__file__).resolve().parent / "data"
VERSIONS_PACKAGE = "flask"
VERSIONS = ("2.2.0", "2.2.1", "2.2.2", "2.2.3", "2.2.4", "2.2.5", "2.3.0", "2.3.1")
# The big history (``python -m bench --only history``): 8 django sdists, ~10x the flask one.
HISTORY_PACKAGE = "django"
HISTORY = tuple(f"4.2.{i}" for i in range(8))


class MixedStream(io.RawIOBase):
    """``size`` bytes of the mixed dataset, generated on demand (read-only, not seekable)."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.size = size
        self.seed = seed
        self._key = blake3.blake3(f"stratus-bench-{seed}".encode()).digest()
        self._pool = _text_pool(random.Random(seed))
        mean = sum(map(len, self._pool)) // len(self._pool)
        self._lines = BLOCK // mean + 100
        self._pos = 0
        self._block = b""
        self._block_at = 0

    def readable(self) -> bool:
        return True

    def block(self, index: int) -> bytes:
        """Block ``index`` of the stream (1 MiB; random when even, text when odd)."""
        if index % 2 == 0:
            return blake3.blake3(key=self._key).update(index.to_bytes(8, "little")).digest(length=BLOCK)
        rng = random.Random(self.seed * 1_000_003 + index)
        return b"".join(rng.choices(self._pool, k=self._lines))[:BLOCK]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            offset = self._pos - self._block_at
            if not self._block or offset >= len(self._block):
                self._block_at = self._pos - self._pos % BLOCK
                self._block = self.block(self._pos // BLOCK)
                offset = self._pos - self._block_at
            n = min(len(view) - done, len(self._block) - offset, self.size - self._pos)
            view[done : done + n] = self._block[offset : offset + n]
            done += n
            self._pos += n
        return done


def write_mixed(path: Path, size: int, seed: int = 1) -> Path:
    """Write ``size`` bytes of the mixed dataset to ``path`` and fsync it (so writeback does not
    steal CPU from the first timing)."""
    stream = MixedStream(size, seed)
    with open(path, "wb") as out:
        shutil.copyfileobj(stream, out, 4 * MIB)
        out.flush()
        os.fsync(out.fileno())
    return path


# ---- edits -------------------------------------------------------------------------------------


_clock = [0]


def touch_later(path: Path, seconds: int = 10) -> None:
    """Move the mtime forward, as time would between two backups: tools that skip unchanged files
    by (size, mtime) must see an edit made within the same second as the previous run. The bench
    clock only moves forward, so two touched files never share a whole-second mtime."""
    st = path.stat()
    _clock[0] = max(_clock[0], st.st_mtime_ns) + seconds * 1_000_000_000
    os.utime(path, ns=(st.st_atime_ns, _clock[0]))


def scattered_edits(path: Path, count: int = 10, size: int = 4096, seed: int = 2) -> list[int]:
    """Overwrite ``count`` blocks of ``size`` random bytes spread evenly over the file; returns offsets."""
    rng = random.Random(seed)
    length = path.stat().st_size
    stride = length // count
    offsets = [i * stride + rng.randrange(max(1, stride - size)) for i in range(count)]
    with open(path, "r+b") as f:
        for offset in offsets:
            f.seek(offset)
            f.write(rng.randbytes(size))
    return offsets


def insert_front(path: Path, data: bytes = b"!") -> None:
    """Insert ``data`` at offset 0 (rewrites the file: every later byte moves)."""
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "wb") as out, open(path, "rb") as src:
        out.write(data)
        shutil.copyfileobj(src, out, 4 * MIB)
    os.replace(temp, path)


def append(path: Path, size: int = MIB, seed: int = 3) -> None:
    """Append ``size`` new bytes (half random, half text-like, like the rest of the file)."""
    stream = MixedStream(size + BLOCK, seed)
    stream.read(BLOCK // 2)  # start mid-block so both kinds of data are appended
    with open(path, "ab") as out:
        out.write(stream.read(size))


# ---- versions of a real project -------------------------------------------------------------------


@dataclass
class Versions:
    """Successive releases as files, oldest first, and where they came from."""

    files: list[Path]
    source: str  # "pypi:flask 2.2.0..2.3.1" or "synthetic (...)"


def _download_sdist(package: str, version: str, cache: Path) -> Path | None:
    tar = cache / f"{package}-{version}.tar"
    if tar.exists():
        return tar
    tmp = cache / f"dl-{version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", str(tmp),
           f"{package}=={version}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    archives = list(tmp.glob("*.tar.gz"))
    if not archives:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    with gzip.open(archives[0], "rb") as src, open(tar.with_suffix(".part"), "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tar.with_suffix(".part"), tar)
    shutil.rmtree(tmp, ignore_errors=True)
    return tar


def release_versions(work: Path, package: str = VERSIONS_PACKAGE, versions: tuple[str, ...] = VERSIONS) -> Versions:
    """The release archives (downloaded once into bench/data/), or a synthetic stand-in."""
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    files = []
    for version in versions:
        tar = _download_sdist(package, version, DATA_DIR)
        if tar is None:
            break
        files.append(tar)
    if len(files) == len(versions):
        return Versions(files, f"pypi:{package} {versions[0]}..{versions[-1]} ({len(versions)} sdists, gunzipped)")
    return Versions(synthetic_versions(work / "synthetic-versions", len(versions)),
                    f"synthetic evolving source tree ({len(versions)} versions): download of {package} failed")


def _source_file(rng: random.Random, words: list[str], lines: int) -> bytes:
    out = []
    for _ in range(lines):
        indent = "    " * rng.randint(0, 3)
        out.append(f"{indent}{rng.choice(words)}_{rng.choice(words)} = {rng.choice(words)}({rng.randint(0, 999)})")
    return ("\n".join(out) + "\n").encode()


def synthetic_versions(folder: Path, count: int, files: int = 300, seed: int = 5) -> list[Path]:
    """``count`` tar archives of a source tree that changes a little from one to the next."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(2000)]
    tree = {f"pkg/mod{i // 20}/file{i}.py": _source_file(rng, words, rng.randint(20, 600)) for i in range(files)}
    folder.mkdir(parents=True, exist_ok=True)
    result = []
    for v in range(count):
        if v:
            for name in rng.sample(sorted(tree), len(tree) // 20):
                lines = tree[name].split(b"\n")
                at = rng.randrange(len(lines))
                lines[at:at] = _source_file(rng, words, rng.randint(1, 30)).split(b"\n")
                tree[name] = b"\n".join(lines)
            for _ in range(3):
                tree[f"pkg/new{v}/file{rng.randrange(10**6)}.py"] = _source_file(rng, words, rng.randint(20, 300))
        path = folder / f"synthetic-{v + 1}.tar"
        with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(tree):
                info = tarfile.TarInfo(f"project-{v + 1}/{name}")
                info.size = len(tree[name])
                info.mtime = 1_700_000_000 + v * 86400
                tar.addfile(info, io.BytesIO(tree[name]))
        result.append(path)
    return result


# ---- a directory tree -------------------------------------------------------------------------------


@dataclass
class Tree:
    """A generated directory tree."""

    root: Path
    small: list[Path]
    large: list[Path]

    @property
    def files(self) -> int:
        return len(self.small) + len(self.large)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.small + self.large)


def make_tree(root: Path, small_files: int, large_sizes: list[int], seed: int = 7) -> Tree:
    """``small_files`` source-like files (0.5-16 KiB, 100 per folder) plus large mixed files."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(3000)]
    small = []
    for i in range(small_files):
        path = root / f"src/d{i // 1000:02d}/m{i // 100 % 10}/f{i:05d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_source_file(rng, words, rng.randint(10, 350)))
        small.append(path)
    large = []
    for i, size in enumerate(large_sizes):
        path = root / f"blobs/large{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        large.append(write_mixed(path, size, seed=100 + i))
    return Tree(root, small, large)


def change_tree(tree: Tree, fraction: float = 0.01, seed: int = 8) -> int:
    """Change ``fraction`` of the files: small ones get a few new lines, one large file gets an edit.
    Returns how many files changed."""
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(500)]
    count = max(1, round(tree.files * fraction))
    large = tree.large[:1] if tree.large else []
    chosen = rng.sample(tree.small, count - len(large))
    for path in chosen:
        lines = path.read_bytes().split(b"\n")
        at = rng.randrange(len(lines))
        lines[at:at] = _source_file(rng, words, rng.randint(1, 5)).split(b"\n")
        path.write_bytes(b"\n".join(lines))
    for path in large:
        scattered_edits(path, count=1, seed=seed)
    for path in chosen + large:
        touch_later(path)
    return len(chosen) + len(large)


# ---- the workspace of one benchmark run ---------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Dataset sizes and time bounds of one mode (full or --quick)."""

    mixed: int
    memory: int
    tree_small: int
    tree_large: tuple[int, ...]
    latency_files: int
    latency_seconds: float
    watchers: int
    active_clients: int
    tls_rounds: int
    gc_file: int = 256 * MIB  # the file of the gc group's 30 daily versions
    gc_cycles: int = 40  # collections of the gc_stress group (--cycles)

    @classmethod
    def full(cls) -> Sizes:
        return cls(1024 * MIB, 4096 * MIB, 10_000, (64 * MIB, 32 * MIB, 32 * MIB), 1000, 3.0, 1000, 100, 3)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(64 * MIB, 512 * MIB, 1000, (16 * MIB,), 300, 1.0, 1000, 100, 1, 32 * MIB, 6)


class Workspace:
    """The temporary folder of a run, its sizes, and datasets built on first use."""

    def __init__(self, root: Path, sizes: Sizes, log: object = print) -> None:
        self.root = root
        self.sizes = sizes
        self.notes: list[str] = []
        self._log = log
        self._mixed: Path | None = None
        self._tree: Tree | None = None
        self._versions: Versions | None = None
        self._history: Versions | None = None
        self._pki: Path | None = None

    def log(self, message: str) -> None:
        """Progress line on stderr."""
        self._log(message)  # type: ignore[operator]

    def dir(self, name: str) -> Path:
        """A fresh folder ``name`` inside the workspace."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def mixed(self) -> Path:
        """The pristine ``mixed`` file (tests must copy it before editing)."""
        if self._mixed is None:
            label = f"mixed-{self.sizes.mixed // MIB}m" if self.sizes.mixed < 1024 * MIB else \
                f"mixed-{self.sizes.mixed // (1024 * MIB)}g"
            self.log(f"dataset: {label}")
            self._mixed = write_mixed(self.dir("data") / label, self.sizes.mixed)
        return self._mixed

    def tree(self) -> Tree:
        """The ``tree`` dataset (pristine; tests copy it before changing it)."""
        if self._tree is None:
            self.log(f"dataset: tree of {self.sizes.tree_small} small + {len(self.sizes.tree_large)} large files")
            self._tree = make_tree(self.dir("tree-data") / "tree", self.sizes.tree_small, list(self.sizes.tree_large))
        return self._tree

    def versions(self) -> Versions:
        """The ``versions`` dataset (downloaded once, cached in bench/data/)."""
        if self._versions is None:
            self.log("dataset: versions")
            self._versions = release_versions(self.root)
            if self._versions.source.startswith("synthetic"):
                self.notes.append(f"versions dataset: {self._versions.source}")
        return self._versions

    def history(self) -> Versions:
        """The big ``history`` dataset (downloaded once, cached in bench/data/); raises when it
        cannot be had, since a synthetic stand-in would not be a real history."""
        if self._history is None:
            self.log(f"dataset: history ({HISTORY_PACKAGE} {HISTORY[0]}..{HISTORY[-1]})")
            found = release_versions(self.root, HISTORY_PACKAGE, HISTORY)
            if found.source.startswith("synthetic"):
                raise RuntimeError(f"download of {HISTORY_PACKAGE} {HISTORY[0]}..{HISTORY[-1]} failed")
            self._history = found
        return self._history

    def pki(self) -> Path:
        """The dev PKI every mTLS server and client of the run shares."""
        if self._pki is None:
            from service.certs import create_dev_pki

            self._pki = self.root / "pki"
            create_dev_pki(self._pki, clients=("bench",))
        return self._pki
