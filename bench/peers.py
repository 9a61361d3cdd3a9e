"""StratusVault next to restic, borg and rsync, on the same data in the same run (issue #7).

Every tool works on its own copy of the data and its own repository (or destination), and goes
through the same steps: fresh upload, unchanged re-upload, three edits (10 scattered 4 KiB
overwrites, a 1-byte insertion at the front, a 1 MiB append), restore of the latest version;
then every release of the ``versions`` dataset in turn (bytes stored at the end); then the
``tree`` dataset (fresh, unchanged, 1% changed). Edited files get a later mtime, as they would
between two nightly runs, so tools that skip files by (size, mtime) see every edit.

StratusVault moves single files through the client library (so every protocol byte is counted)
and trees through the CLI, ``stratus put DIR REMOTE``, as a new process like the other tools.
What "bytes sent" means per tool: StratusVault, the protocol bytes it sent (:class:`WireCounter`);
restic and borg, what the repository grew by (they write to a local repository); rsync, its
"Literal data" (bytes not found in the destination's old copy; ``--no-whole-file`` forces the
delta algorithm, which rsync skips between local paths). A tool that is not installed is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from bench import datasets
from bench.datasets import Workspace
from bench.servers import ROOT, BenchServer, dir_bytes, settle

MIB = 1024 * 1024
PEERS = ("stratusvault", "restic", "borg", "rsync")
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

    @abstractmethod
    def stored(self) -> int | None:
        """Bytes the repository takes (apparent size), or None when the tool keeps no versions."""

    def version(self) -> str:
        return ""

    def close(self) -> None:  # noqa: B027 - most tools start nothing that outlives a command
        """Stop whatever the peer started."""


class StratusPeer(Peer):
    """StratusVault: a server of its own (mTLS); files through the client library, trees through the CLI."""

    name = "stratusvault"

    def __init__(self, work: Path, ws: Workspace) -> None:
        super().__init__(work, ws)
        self.server = BenchServer(work / "server", ws.pki()).start()
        self.client, self.counter = self.server.client()
        self.client.server_info()
        self.tree_method = ""

    def version(self) -> str:
        return self.client.server_info().server_version

    def push(self, source: Path) -> Step:
        if source.is_dir():
            seconds, sent, detail = self._put_tree(source)
            return Step(seconds, sent, self.stored(), detail)
        sent0, received0 = self.counter.snapshot()
        start = time.perf_counter()
        result = self.client.put_file(source, f"bench/{source.name}")
        seconds = time.perf_counter() - start
        sent1, received1 = self.counter.snapshot()
        detail = {"chunks_sent": result.chunks_sent, "frame_bytes": result.bytes_sent, "unchanged": result.unchanged,
                  "all_traffic": sent1 - sent0 + received1 - received0}
        return Step(seconds, sent1 - sent0, self.stored(), detail)

    def cli_put(self, source: Path, remote: str) -> tuple[float, dict]:
        """``stratus --json put SOURCE REMOTE`` in a new process (with this peer's state cache)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "STRATUS_SERVER": self.server.address,
               "STRATUS_TLS_DIR": str(self.ws.pki()), "STRATUS_CACHE_DIR": str(self.work / "cli-cache"),
               "STRATUS_CLIENT_CONFIG": str(self.work / "no-config.toml")}
        seconds, out = _run([sys.executable, "-m", "cli.main", "--json", "put", str(source), remote], env=env, cwd=ROOT)
        return seconds, {f"cli_{k}": v for k, v in json.loads(out).get("stats", {}).items()}

    def _put_tree(self, source: Path) -> tuple[float, int | None, dict]:
        """A tree goes up as a user sends it: ``stratus put DIR REMOTE``, a new process each time."""
        if not HAVE_CLI:
            raise RuntimeError("cli/main.py is missing: the tree upload needs the stratus CLI")
        self.tree_method = "cli"
        seconds, stats = self.cli_put(source, f"tree/{source.name}")
        return seconds, stats.get("cli_bytes_sent"), {
            "method": "CLI (python -m cli.main put DIR REMOTE); bytes = chunk bytes sent", **stats}

    def restore(self, source_name: str, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        self.client.get_file(f"bench/{source_name}", dest / source_name)
        return time.perf_counter() - start

    def stored(self) -> int:
        return self.server.stored()["total"]

    def close(self) -> None:
        self.client.close()
        self.server.stop()


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

    def stored(self) -> int:
        return dir_bytes(self.repo)


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

    def stored(self) -> int:
        return dir_bytes(self.repo)


class RsyncPeer(Peer):
    """rsync to a local destination with the delta algorithm forced (``--no-whole-file``)."""

    name = "rsync"
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
        cmd = ["rsync", "-a", "--no-whole-file", "--stats", str(source), str(self.dest) + "/"]
        seconds, out = _run(cmd)
        literal = self._number(self._LITERAL, out)
        # sent: literal data plus block references; received: the receiver's block checksums
        return Step(seconds, literal, None, {"total_bytes_sent": self._number(self._SENT, out),
                                             "total_bytes_received": self._number(self._RECEIVED, out)})

    def restore(self, source_name: str, dest: Path) -> float:
        dest.mkdir(parents=True, exist_ok=True)
        return _run(["rsync", "-a", "--stats", str(self.dest / source_name), str(dest) + "/"])[0]

    def stored(self) -> None:
        return None


PEER_CLASSES: dict[str, type[Peer]] = {
    "stratusvault": StratusPeer, "restic": ResticPeer, "borg": BorgPeer, "rsync": RsyncPeer,
}


def available() -> tuple[list[str], list[str]]:
    """(peers that can run, notes about the ones that cannot)."""
    names, notes = ["stratusvault"], []
    for name in PEERS[1:]:
        if shutil.which(name):
            names.append(name)
        else:
            package = "borgbackup" if name == "borg" else name
            notes.append(f"{name} is not installed: skipped (apt-get install {package})")
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
    """Protocol bytes both ways, where the tool has a protocol: StratusVault, rsync (literal data,
    block references and the receiver's checksums)."""
    if "all_traffic" in step.detail:
        return step.detail["all_traffic"]
    if "total_bytes_sent" in step.detail:
        return step.detail["total_bytes_sent"] + step.detail["total_bytes_received"]
    return None


def mixed_scenario(peer: Peer, pristine: Path) -> dict:
    """Fresh upload, unchanged re-upload, three edits, restore of the latest version."""
    folder = peer.work / "src"
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / pristine.name
    shutil.copyfile(pristine, work)
    size = work.stat().st_size
    out: dict = {}

    def push(label: str) -> None:
        before = peer.stored()
        settle()
        step = peer.push(work)
        out[label] = {"seconds": step.seconds, "bytes": _sent_or_added(step, before),
                      "stored_after": step.stored_after, **step.detail, "all_traffic": _all_traffic(step)}

    push("fresh")
    out["fresh"]["mb_per_s"] = size / out["fresh"]["seconds"] / 1e6
    push("unchanged")
    if isinstance(peer, StratusPeer) and HAVE_CLI:
        # What a nightly `stratus put` does with an unchanged big file: the first run reads it once
        # and fills the state cache, the second trusts the cache (the head is still that version).
        remote = f"bench/{work.name}"
        first, _ = peer.cli_put(work, remote)
        settle()
        seconds, stats = peer.cli_put(work, remote)
        out["unchanged_cli"] = {"seconds": seconds, "first_run_seconds": first, **stats}
    for label, edit in (("edit_10x4k", datasets.scattered_edits), ("insert_front_1b", datasets.insert_front),
                        ("append_1m", datasets.append)):
        edit(work)
        datasets.touch_later(work)
        push(label)
    restore_dir = peer.work / "restore"
    settle()
    seconds = peer.restore(work.name, restore_dir)
    restored = next(p for p in restore_dir.rglob(work.name) if p.is_file())
    out["restore"] = {"seconds": seconds, "mb_per_s": restored.stat().st_size / seconds / 1e6,
                      "identical": _file_digest(restored) == _file_digest(work)}
    shutil.rmtree(restore_dir)
    work.unlink()
    return out


def versions_scenario(peer: Peer, versions: list[Path]) -> dict:
    """Every release in turn as the same file name; bytes sent per release and stored at the end."""
    folder = peer.work / "src"
    folder.mkdir(parents=True, exist_ok=True)
    work = folder / "release.tar"
    steps = []
    for release in versions:
        before = peer.stored()
        shutil.copyfile(release, work)
        datasets.touch_later(work)
        settle()
        step = peer.push(work)
        steps.append({"release": release.name, "seconds": step.seconds, "bytes": _sent_or_added(step, before),
                      "all_traffic": _all_traffic(step)})
    deltas = [s["bytes"] for s in steps[1:] if s["bytes"] is not None]
    traffic = [s["all_traffic"] for s in steps[1:] if s["all_traffic"] is not None]
    return {"steps": steps, "stored": peer.stored(), "logical": sum(p.stat().st_size for p in versions),
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
        before = peer.stored()
        settle()
        step = peer.push(work)
        out[label] = {"seconds": step.seconds, "bytes": _sent_or_added(step, before), **step.detail}
    shutil.rmtree(work)
    return out


def run(ws: Workspace) -> dict:
    """The whole peer comparison."""
    names, notes = available()
    result: dict = {"peers": names, "notes": notes, "versions": {}, "mixed": {}, "tree": {}, "tool_versions": {}}
    mixed = ws.mixed()
    versions = ws.versions()
    tree = ws.tree()
    result["versions_source"] = versions.source
    result["mixed_size"] = mixed.stat().st_size
    result["tree_files"], result["tree_bytes"] = tree.files, tree.size
    for name in names:
        for scenario in ("mixed", "versions", "tree"):
            ws.log(f"peers: {name} / {scenario}")
            peer = PEER_CLASSES[name](ws.dir(f"peers/{name}-{scenario}"), ws)
            try:
                result["tool_versions"].setdefault(name, peer.version())
                if scenario == "mixed":
                    result["mixed"][name] = mixed_scenario(peer, mixed)
                elif scenario == "versions":
                    result["versions"][name] = versions_scenario(peer, versions.files)
                else:
                    result["tree"][name] = tree_scenario(peer, tree)
                    if isinstance(peer, StratusPeer):
                        result["tree"][name]["method"] = peer.tree_method
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                notes.append(f"{name} / {scenario} failed: {exc}")
            finally:
                peer.close()
                shutil.rmtree(peer.work, ignore_errors=True)
    return result
