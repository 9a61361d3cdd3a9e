"""StratusVault next to restic, borg and rsync, on the same data in the same run (issue #7, #12).

Every tool works on its own copy of the data and its own repository (or destination), and goes
through the same steps: fresh upload, unchanged re-upload, three edits (10 scattered 4 KiB
overwrites, a 1-byte insertion at the front, a 1 MiB append), restore of the latest version;
then every release of the ``versions`` dataset in turn (bytes on disk at the end); then the
``tree`` dataset (fresh, unchanged, 1% changed). The ``get_over_old`` scenario is the download
direction: a client holds version 1 of the mixed file, version 2 (10 scattered 4 KiB overwrites)
is pushed, and the client fetches it over its old copy (StratusVault: ``stratus get``, once with
delta downloads and once against a server with them off, ``stratusvault-plain``; rsync: from the
pushed copy into the old one with the delta algorithm forced). Edited files get a later mtime, as they would
between two nightly runs, so tools that skip files by (size, mtime) see every edit.

Every tool is timed the way a user runs it, as a process: StratusVault through its CLI
(``stratus put FILE|DIR REMOTE``, ``stratus get REMOTE LOCAL``; the server is started once per
scenario), restic and borg through theirs, rsync twice (without and with ``-z``). StratusVault's
in-process figures (the client library on a warm mTLS channel) are measured on a server of their
own and reported apart, labelled as such.

What "bytes" means per tool: StratusVault, every protocol message byte the CLI sent (chunks,
digest queries, the ``ListFiles`` walk, manifests, commits; ``python -m bench.wire``), and both
ways in "all protocol bytes"; restic and borg, what the repository grew by (they write to a local
repository); rsync, "Total bytes sent" of ``--stats`` (literal data, compressed with ``-z``, plus
block references), and its "Literal data" (uncompressed, even with ``-z``) apart.
``--no-whole-file`` forces the delta algorithm, which rsync skips between local paths.

Bytes on disk are those of the whole data dir or repository as ``du`` sees it: apparent
(``du -sb``, file sizes) and allocated (``du -sB1``: blocks of files and folders). For
StratusVault that is everything the server keeps (chunks, packs, manifests, the embedded
Valkey's files), not the store's own accounting. A tool that is not installed is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from bench import datasets
from bench.datasets import Workspace
from bench.servers import ROOT, BenchServer, CpuProbe, disk_usage, settle
from bench.wire import WIRE_OUT_ENV

MIB = 1024 * 1024
PEERS = ("stratusvault", "restic", "borg", "rsync", "rsync-z")
BINARIES = {"rsync-z": "rsync"}
PACKAGES = {"borg": "borgbackup", "rsync-z": "rsync"}
HAVE_CLI = (ROOT / "cli" / "main.py").exists()


@dataclass
class Step:
    """One push of a tool: how long, how many bytes it moved or added."""

    seconds: float
    sent: int | None  # see the module docstring for what each tool counts
    stored_after: int | None
    detail: dict = field(default_factory=dict)


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return seconds, done.stdout


class Peer(ABC):
    """A backup or transfer tool, driven through one scenario in ``work``."""

    name = ""

    def __init__(self, work: Path, ws: Workspace) -> None:
        self.work = work
        self.ws = ws
        work.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def push(self, source: Path) -> Step:
        """Store the current content of ``source`` (a file or a folder) as a new version."""

    @abstractmethod
    def restore(self, source_name: str, dest: Path) -> float:
        """Write the latest version of ``source_name`` into folder ``dest``; returns seconds."""

    def fetch(self, source_name: str, dest: Path) -> Step:
        """Bring ``dest/source_name`` to the latest version, reusing what it holds (a tool with a
        wire: "sent" is what travelled towards ``dest``)."""
        raise NotImplementedError(f"{self.name} has no download over an old copy")

    def disk_parts(self) -> dict[str, list[int]] | None:
        """(apparent, allocated) bytes per top-level entry of the data dir, or None."""
        return None

    def disk(self) -> tuple[int, int] | None:
        """(apparent, allocated) bytes of the repository or data dir, or None when the tool keeps
        no versions."""
        return None

    def stored(self) -> int | None:
        """Apparent bytes of the repository or data dir (what a push grew it by is its "bytes")."""
        disk = self.disk()
        return disk[0] if disk else None

    def version(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 - most tools start nothing that outlives a command
        """Stop whatever the peer started."""


class StratusPeer(Peer):
    """StratusVault: a server of its own (mTLS), started once; files and trees through the CLI, one
    process per command, every protocol byte of it counted (:mod:`bench.wire`)."""

    name = "stratusvault"
    server_env: dict[str, str] = {}

    def __init__(self, work: Path, ws: Workspace) -> None:
        super().__init__(work, ws)
        if not HAVE_CLI:
            raise RuntimeError("cli/main.py is missing: the comparison needs the stratus CLI")
        self.server = BenchServer(work / "server", ws.pki(), env=self.server_env).start()
        self.tree_method = "cli"
        self._version = ""

    def version(self) -> str:
        if not self._version:
            client, _ = self.server.client()
            try:
                self._version = client.server_info().server_version
            finally:
                client.close()
        return self._version

    def cli(self, *args: str) -> tuple[float, dict, dict[str, int]]:
        """``stratus --json ARGS`` in a new process: (seconds, its JSON stats, protocol bytes
        ``{"sent", "received"}``). Each peer keeps its own state cache, as a user's machine would."""
        fd, wire_out = tempfile.mkstemp(prefix="wire-", suffix=".json", dir=self.work)
        os.close(fd)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUS_SERVER": self.server.address,
               "STRATUS_TLS_DIR": str(self.ws.pki()), "STRATUS_CACHE_DIR": str(self.work / "cli-cache"),
               "STRATUS_CLIENT_CONFIG": str(self.work / "no-config.toml"), WIRE_OUT_ENV: wire_out}
        try:
            seconds, out = _run([sys.executable, "-m", "bench.wire", "--json", *args], env=env, cwd=ROOT)
            wire = json.loads(Path(wire_out).read_text() or "{}")
        finally:
            os.unlink(wire_out)
        try:
            stats = json.loads(out).get("stats", {}) if out.strip() else {}
        except json.JSONDecodeError:
            stats = {}
        return seconds, {f"cli_{k}": v for k, v in stats.items()}, wire

    def push(self, source: Path) -> Step:
        remote = f"tree/{source.name}" if source.is_dir() else f"bench/{source.name}"
        seconds, stats, wire = self.cli("put", str(source), remote)
        detail = {"method": "CLI (stratus put SOURCE REMOTE), a new process", **stats,
                  "all_traffic": wire.get("sent", 0) + wire.get("received", 0)}
        return Step(seconds, wire.get("sent"), self.stored(), detail)

    def restore(self, source_name: str, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        return self.cli("get", f"bench/{source_name}", str(dest / source_name))[0]

    def fetch(self, source_name: str, dest: Path) -> Step:
        dest.mkdir(parents=True, exist_ok=True)
        seconds, stats, wire = self.cli("get", f"bench/{source_name}", str(dest / source_name))
        return Step(seconds, wire.get("received"), None, {"method": "CLI (stratus get REMOTE LOCAL)", **stats,
                                                          "all_traffic": wire.get("sent", 0) + wire.get("received", 0)})

    def disk(self) -> tuple[int, int]:
        return self.server.disk()

    def disk_parts(self) -> dict[str, list[int]]:
        root = self.server.data_dir
        return {entry.name: list(disk_usage(entry)[:2]) if entry.is_dir() else
                [entry.stat().st_size, entry.stat().st_blocks * 512] for entry in sorted(root.iterdir())}

    def close(self) -> None:
        self.server.stop()


class StratusPlainPeer(StratusPeer):
    """StratusVault with the server setting ``delta_downloads`` off: every changed chunk and the
    manifest travel whole (what a download over an old copy cost before delta downloads)."""

    name = "stratusvault-plain"
    server_env = {"STRATUS_DELTA_DOWNLOADS": "0"}


class StratusNoHintsPeer(StratusPeer):
    """StratusVault with the server's ``delta_hints`` off: the A/B baseline of similarity deltas
    (every chunk stored as its own zstd frame)."""

    name = "stratusvault-nohints"
    server_env = {"STRATUS_DELTA_HINTS": "false"}


class ResticPeer(Peer):
    """restic, local repository, format 2 with compression auto."""

    name = "restic"

    def __init__(self, work: Path, ws: Workspace) -> None:
        super().__init__(work, ws)
        self.repo = work / "repo"
        self.env = {**os.environ, "RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(self.repo),
                    "RESTIC_CACHE_DIR": str(work / "cache"), "RESTIC_COMPRESSION": "auto"}
        _run(["restic", "init", "--repository-version", "2"], self.env)

    def version(self) -> str:
        return _run(["restic", "version"], self.env)[1].split()[1]

    def push(self, source: Path) -> Step:
        seconds, out = _run(["restic", "backup", "--json", "--host", "bench", source.name], self.env, source.parent)
        summary = next((json.loads(line) for line in reversed(out.splitlines())
                        if '"message_type":"summary"' in line.replace(" ", "")), {})
        stored = self.stored()
        return Step(seconds, None, stored, {"data_added": summary.get("data_added")})

    def restore(self, source_name: str, dest: Path) -> float:
        return _run(["restic", "restore", "latest", "--host", "bench", "--target", str(dest)], self.env)[0]

    def disk(self) -> tuple[int, int]:
        return disk_usage(self.repo)[:2]


class BorgPeer(Peer):
    """borg, unencrypted local repository, zstd level 3."""

    name = "borg"

    def __init__(self, work: Path, ws: Workspace) -> None:
        super().__init__(work, ws)
        self.repo = work / "repo"
        self.env = {**os.environ, "BORG_BASE_DIR": str(work / "base"),
                    "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
        self.archives = 0
        _run(["borg", "init", "-e", "none", str(self.repo)], self.env)

    def version(self) -> str:
        return _run(["borg", "--version"], self.env)[1].split()[-1]

    def push(self, source: Path) -> Step:
        self.archives += 1
        cmd = ["borg", "create", "--json", "--compression", "zstd,3", f"{self.repo}::v{self.archives}", source.name]
        seconds, out = _run(cmd, self.env, source.parent)
        stats = json.loads(out).get("archive", {}).get("stats", {})
        return Step(seconds, None, self.stored(), {"deduplicated_size": stats.get("deduplicated_size")})

    def restore(self, source_name: str, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        return _run(["borg", "extract", f"{self.repo}::v{self.archives}"], self.env, dest)[0]

    def disk(self) -> tuple[int, int]:
        return disk_usage(self.repo)[:2]


class RsyncPeer(Peer):
    """rsync to a local destination with the delta algorithm forced (``--no-whole-file``), without
    compression: "bytes" is "Total bytes sent", "Literal data" is kept apart."""

    name = "rsync"
    options: tuple[str, ...] = ()
    _LITERAL = re.compile(r"Literal data: ([\d,.]+)")
    _SENT = re.compile(r"Total bytes sent: ([\d,.]+)")
    _RECEIVED = re.compile(r"Total bytes received: ([\d,.]+)")

    def __init__(self, work: Path, ws: Workspace) -> None:
        super().__init__(work, ws)
        self.dest = work / "dest"
        self.dest.mkdir(exist_ok=True)

    def version(self) -> str:
        return _run(["rsync", "--version"])[1].split()[2]

    @staticmethod
    def _number(pattern: re.Pattern, text: str) -> int:
        match = pattern.search(text)
        return int(re.sub(r"[,.]", "", match.group(1))) if match else 0

    def push(self, source: Path) -> Step:
        return self._sync(source, self.dest)

    def fetch(self, source_name: str, dest: Path) -> Step:
        dest.mkdir(parents=True, exist_ok=True)
        return self._sync(self.dest / source_name, dest)

    def _sync(self, source: Path, dest: Path) -> Step:
        cmd = ["rsync", "-a", *self.options, "--no-whole-file", "--stats", str(source), str(dest) + "/"]
        seconds, out = _run(cmd)
        sent, received = self._number(self._SENT, out), self._number(self._RECEIVED, out)
        # sent: literal data (compressed with -z) plus block references; received: the receiver's checksums
        return Step(seconds, sent, None, {"literal_data": self._number(self._LITERAL, out),
                                          "total_bytes_sent": sent, "total_bytes_received": received})

    def restore(self, source_name: str, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        return _run(["rsync", "-a", *self.options, "--stats", str(self.dest / source_name), str(dest) + "/"])[0]


class RsyncCompressedPeer(RsyncPeer):
    """The same rsync with ``-z`` (zstd or zlib, whatever both ends negotiate): the fair match for
    our zstd frames on the wire."""

    name = "rsync-z"
    options = ("-z",)


PEER_CLASSES: dict[str, type[Peer]] = {
    "stratusvault": StratusPeer, "restic": ResticPeer, "borg": BorgPeer, "rsync": RsyncPeer,
    "rsync-z": RsyncCompressedPeer, "stratusvault-plain": StratusPlainPeer, "stratusvault-nohints": StratusNoHintsPeer,
}
GET_PEERS = ("stratusvault", "stratusvault-plain", "rsync", "rsync-z")  # the tools with a download wire


def available() -> tuple[list[str], list[str]]:
    """(peers that can run, notes about the ones that cannot)."""
    names, notes = ["stratusvault"], []
    for name in PEERS[1:]:
        if shutil.which(BINARIES.get(name, name)):
            names.append(name)
        else:
            notes.append(f"{name} is not installed: skipped (apt-get install {PACKAGES.get(name, name)})")
    return names, notes


def _file_digest(path: Path) -> bytes:
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return hasher.digest()


def _sent_or_added(step: Step, before: int | None) -> int | None:
    """The bytes figure of a push: what was sent, else what the repository grew by."""
    if step.sent is not None:
        return step.sent
    if step.stored_after is not None and before is not None:
        return step.stored_after - before
    return None


def _all_traffic(step: Step) -> int | None:
    """Protocol bytes both ways, where the tool has a protocol: StratusVault (every message), rsync
    (literal data, block references and the receiver's checksums)."""
    if "all_traffic" in step.detail:
        return step.detail["all_traffic"]
    if "total_bytes_sent" in step.detail:
        return step.detail["total_bytes_sent"] + step.detail["total_bytes_received"]
    return None


def _probe(peer: Peer) -> CpuProbe:
    """CPU accounting for one step: the peer's own server (if any) and this process's children
    are the tool; everything else on the machine is "others"."""
    return CpuProbe(peer.server if isinstance(peer, StratusPeer) else None)


def _timed_push(peer: Peer, source: Path) -> dict:
    """One push after a settle: seconds, bytes (sent, else repository growth), the tool's details,
    protocol bytes both ways, the CPU seconds of the tool's own server (StratusVault: server and
    Valkey; 0 for tools without one) and the CPU seconds other processes used meanwhile."""
    before = peer.stored()
    settle()
    probe = _probe(peer)
    step = peer.push(source)
    cpu = probe.stop()
    return {"seconds": step.seconds, "bytes": _sent_or_added(step, before), "stored_after": step.stored_after,
            **step.detail, "all_traffic": _all_traffic(step), "others_cpu": cpu["others_cpu"],
            "server_cpu": cpu["server_cpu"] + cpu["valkey_cpu"]}


def mixed_scenario(peer: Peer, pristine: Path) -> dict:
    """Fresh upload, unchanged re-upload, three edits, restore of the latest version."""
    folder = peer.work / "src"
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / pristine.name
    shutil.copyfile(pristine, work)
    size = work.stat().st_size
    out: dict = {}

    def push(label: str) -> None:
        out[label] = _timed_push(peer, work)

    push("fresh")
    out["fresh"]["mb_per_s"] = size / out["fresh"]["seconds"] / 1e6
    push("unchanged")
    for label, edit in (("edit_10x4k", datasets.scattered_edits), ("insert_front_1b", datasets.insert_front),
                        ("append_1m", datasets.append)):
        edit(work)
        datasets.touch_later(work)
        push(label)
    restore_dir = peer.work / "restore"
    settle()
    probe = _probe(peer)
    seconds = peer.restore(work.name, restore_dir)
    others = probe.stop()["others_cpu"]
    restored = next(p for p in restore_dir.rglob(work.name) if p.is_file())
    out["restore"] = {"seconds": seconds, "mb_per_s": restored.stat().st_size / seconds / 1e6,
                      "identical": _file_digest(restored) == _file_digest(work), "others_cpu": others}
    shutil.rmtree(restore_dir)
    work.unlink()
    return out


def get_over_old_scenario(peer: Peer, pristine: Path) -> dict:
    """Version 1 fetched into an empty folder, version 2 (10 scattered 4 KiB overwrites) pushed,
    then fetched over the old copy: seconds, bytes towards the client, both ways, identical."""
    work = peer.work / "src" / pristine.name
    work.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pristine, work)
    peer.push(work)
    local = peer.work / "local"
    first = peer.fetch(work.name, local)
    datasets.scattered_edits(work)
    datasets.touch_later(work)
    peer.push(work)
    settle()
    probe = _probe(peer)
    step = peer.fetch(work.name, local)
    cpu = probe.stop()
    out = {"full": {"seconds": first.seconds, "bytes": first.sent},
           "edit_10x4k": {"seconds": step.seconds, "bytes": step.sent, **step.detail, "all_traffic": _all_traffic(step),
                          "others_cpu": cpu["others_cpu"],
                          "identical": _file_digest(local / work.name) == _file_digest(work)}}
    shutil.rmtree(local)
    work.unlink()
    return out


def versions_scenario(peer: Peer, versions: list[Path]) -> dict:
    """Every release in turn as the same file name; bytes sent per release and stored at the end."""
    folder = peer.work / "src"
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "release.tar"
    steps = []
    for release in versions:
        shutil.copyfile(release, work)
        datasets.touch_later(work)
        steps.append({"release": release.name, **_timed_push(peer, work)})
    deltas = [s["bytes"] for s in steps[1:] if s["bytes"] is not None]
    traffic = [s["all_traffic"] for s in steps[1:] if s["all_traffic"] is not None]
    disk = peer.disk()
    return {"steps": steps, "stored": disk[0] if disk else None, "allocated": disk[1] if disk else None,
            "disk_parts": peer.disk_parts(),
            "seconds": sum(s["seconds"] for s in steps), "others_cpu": sum(s["others_cpu"] for s in steps),
            "server_cpu": sum(s["server_cpu"] for s in steps),
            "logical": sum(p.stat().st_size for p in versions),
            "delta_bytes_total": sum(deltas) if deltas else None,
            "delta_traffic_total": sum(traffic) if traffic else None}


def tree_scenario(peer: Peer, tree: datasets.Tree) -> dict:
    """A fresh tree upload, an unchanged re-upload, then one with 1% of the files changed."""
    work = peer.work / "src" / tree.root.name
    work.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(tree.root, work, copy_function=shutil.copy2)
    copy = datasets.Tree(work, [work / p.relative_to(tree.root) for p in tree.small],
                         [work / p.relative_to(tree.root) for p in tree.large])
    out = {}
    for label in ("fresh", "unchanged", "changed_1pct"):
        if label == "changed_1pct":
            out["files_changed"] = datasets.change_tree(copy)
        out[label] = _timed_push(peer, work)
    shutil.rmtree(work)
    return out


def in_process(ws: Workspace, pristine: Path) -> dict:
    """StratusVault's own figures, apart: the client library in this process on a warm mTLS
    channel, a fresh upload and a restore of the mixed file on a server of their own (no process
    start-up, no state cache; what ``bench.transfer`` measures too)."""
    work = ws.dir("peers/stratusvault-in-process")
    server = BenchServer(work / "server", ws.pki()).start()
    client, counter = server.client()
    try:
        client.server_info()
        size = pristine.stat().st_size
        out: dict = {}
        for label, call in (("fresh", lambda: client.put_file(pristine, f"bench/{pristine.name}")),
                            ("restore", lambda: client.get_file(f"bench/{pristine.name}", work / pristine.name))):
            settle()
            probe = CpuProbe(server)
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
            others = probe.stop()["others_cpu"]
            out[label] = {"seconds": seconds, "mb_per_s": size / seconds / 1e6, "others_cpu": others}
        out["restore"]["identical"] = _file_digest(work / pristine.name) == _file_digest(pristine)
        sent, received = counter.snapshot()
        return {**out, "all_traffic": sent + received}
    finally:
        client.close()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def _with_peers(ws: Workspace, names: list[str], scenario: str, notes: list[str], result: dict,
                body: object) -> None:
    """Run ``body(peer)`` for every peer in a fresh folder; store what it returns in
    ``result[scenario][name]``; a failing tool becomes a note."""
    for name in names:
        ws.log(f"peers: {name} / {scenario}")
        peer = None
        try:
            peer = PEER_CLASSES[name](ws.dir(f"peers/{name}-{scenario}"), ws)
            result["tool_versions"].setdefault(name, peer.version())
            result[scenario][name] = body(peer)  # type: ignore[operator]
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            notes.append(f"{name} / {scenario} failed: {exc}")
        finally:
            if peer is not None:
                peer.close()
                shutil.rmtree(peer.work, ignore_errors=True)


def run(ws: Workspace) -> dict:
    """The whole peer comparison (the small ``versions`` history; ``history`` is the big one)."""
    names, notes = available()
    result: dict = {"peers": names, "notes": notes, "versions": {}, "mixed": {}, "tree": {}, "tool_versions": {}}
    _get_over_old_into(ws, names, result)
    mixed = ws.mixed()
    versions = ws.versions()
    tree = ws.tree()
    result["versions_source"] = versions.source
    result["mixed_size"] = mixed.stat().st_size
    result["tree_files"], result["tree_bytes"] = tree.files, tree.size
    _with_peers(ws, names, "mixed", notes, result, lambda peer: mixed_scenario(peer, mixed))
    _with_peers(ws, names, "versions", notes, result, lambda peer: versions_scenario(peer, versions.files))
    _with_peers(ws, names, "tree", notes, result, lambda peer: tree_scenario(peer, tree))
    ws.log("peers: stratusvault in-process figures")
    result["in_process"] = in_process(ws, mixed)
    return result


def run_get_over_old(ws: Workspace) -> dict:
    """The download over an old copy alone (``python -m bench --only get_over_old``): StratusVault
    with and without delta downloads, rsync and rsync -z, in the same run."""
    names, notes = available()
    result: dict = {"notes": notes, "tool_versions": {}}
    _get_over_old_into(ws, names, result)
    return result


def _get_over_old_into(ws: Workspace, available_names: list[str], result: dict) -> None:
    """Run :func:`get_over_old_scenario` for the tools with a download wire; results into ``result``."""
    names = [n for n in GET_PEERS if n in available_names or n == "stratusvault-plain"]
    mixed = ws.mixed()
    result.update({"get_peers": names, "get_over_old": {}, "mixed_size": mixed.stat().st_size})
    _with_peers(ws, names, "get_over_old", result["notes"], result, lambda peer: get_over_old_scenario(peer, mixed))


def run_history(ws: Workspace) -> dict:
    """The big real version history (``datasets.HISTORY``), file by file, every tool as a process:
    on-disk bytes (apparent and allocated) and time; StratusVault also with delta hints off (A/B)."""
    names, notes = available()
    names.insert(1, StratusNoHintsPeer.name)
    history = ws.history()
    result: dict = {"peers": names, "notes": notes, "history": {}, "tool_versions": {},
                    "source": history.source}
    _with_peers(ws, names, "history", notes, result, lambda peer: versions_scenario(peer, history.files))
    return result
