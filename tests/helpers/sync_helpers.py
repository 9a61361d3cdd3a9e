"""Helpers of the sync tests: ``stratus sync --watch`` daemons as real processes, folder snapshots, waiting."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cli_helpers import isolated_env, process_env, start_process

from cli.syncstate import STATE_DIR


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every synced file (content) and folder (None) below ``root``: no state folder, no temp files."""
    out: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] == STATE_DIR or path.name.endswith(".svpart") or rel == ".stratusignore":
            continue
        if path.is_symlink():
            continue
        out[rel] = None if path.is_dir() else path.read_bytes()
    return out


def wait_until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    """Poll ``check`` until true; AssertionError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_same(a: Path, b: Path, timeout: float = 20.0) -> None:
    """Wait until both folders hold the same files and folders."""
    def same() -> bool:
        try:
            return snapshot(a) == snapshot(b)
        except OSError:  # a file went away while it was read: the daemons are still at work
            return False

    try:
        wait_until(same, timeout, f"{a} and {b} to converge")
    except AssertionError as exc:
        sa, sb = snapshot(a), snapshot(b)
        differ = sorted(k for k in sa.keys() | sb.keys() if sa.get(k, b"-") != sb.get(k, b"-"))
        raise AssertionError(f"{exc}; they differ in {differ[:20]}") from None


class Daemon:
    """``stratus --json sync --watch FOLDER PREFIX`` as a real process with a private cache (``home``)."""

    def __init__(self, address: str, folder: Path, prefix: str, home: Path, *extra: str) -> None:
        self.address, self.folder, self.prefix, self.home, self.extra = address, folder, prefix, home, extra
        self.env = isolated_env(home)
        self.proc: subprocess.Popen[str] | None = None
        self.log = home / "sync.log"

    def start(self) -> Daemon:
        self.home.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "a")  # noqa: SIM115 - the child holds its own copy
        self.proc = start_process(["--server", self.address, "--insecure", "--json", "sync", "--watch",
                                   *self.extra, str(self.folder), self.prefix], self.env, stdout=out,
                                  stderr=subprocess.STDOUT)
        out.close()
        return self

    def actions(self) -> list[dict]:
        """The JSON action lines logged so far."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def run_sync(address: str, folder: Path, prefix: str, home: Path, timeout: float = 60) -> dict:
    """One ``stratus --json sync FOLDER PREFIX`` as a real process; its JSON document."""
    proc = subprocess.run(
        [*_python(), "--server", address, "--insecure", "--json", "sync", str(folder), prefix],
        env=process_env(isolated_env(home)), capture_output=True, text=True, timeout=timeout,
        cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def _python() -> list[str]:
    import sys

    return [sys.executable, "-m", "cli.main"]
