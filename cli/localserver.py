"""Start a local StratusVault server as a child process (``python -m service.server``).

One launcher for everything that needs a real server next to it: ``stratus demo``, the
benchmarks and the test suite. The child is a separate process on purpose: it keeps its own
event loop, signal handling and GIL, and a crash on either side cannot corrupt the other.

Invariants:

* nothing of the ``service`` package is imported here (the CLI reaches the service only through
  ``stratus serve``); the child finds the packages through ``PYTHONPATH``;
* :meth:`LocalServer.start` returns only once the child printed its ``serving on HOST:PORT`` line,
  so :attr:`LocalServer.address` accepts connections; otherwise the child is gone and
  :class:`~cas.errors.CasError` says why;
* the child inherits none of the caller's ``STRATUS_*`` variables (``STRATUS_INSECURE`` would
  clash with ``--tls-dir``), only the ones passed in ``env``.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from cas.errors import CasError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"serving on (\S+):(\d+)")
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
_WILDCARD_HOSTS = ("0.0.0.0", "", "[::]", "::")


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the caller's without ``STRATUS_*``, the packages on ``PYTHONPATH``, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class LocalServer:
    """A ``python -m service.server`` child process; a context manager that stops it on exit.

    ``tls_dir`` None means ``--insecure`` (unless ``args`` name a ``--tls-dir``); ``redis_url``
    None or '' means the embedded Valkey in the data dir; ``log`` receives the child's stderr
    (None: inherited from this process); ``through_cli`` starts ``stratus serve`` instead.
    ``data_dir`` None passes ``args`` alone: every setting comes from them (or the config file
    and ``STRATUS_*`` variables they lead to).
    """

    def __init__(
        self, data_dir: Path | None, *, listen: str = "127.0.0.1:0", tls_dir: Path | None = None,
        redis_url: str | None = None, args: Sequence[str] = (), env: Mapping[str, str] | None = None,
        log: Path | None = None, start_timeout: float = START_TIMEOUT, through_cli: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.listen = listen
        self.tls_dir = tls_dir
        self.redis_url = redis_url
        self.args = list(args)
        self.env = dict(env or {})
        self.log_path = log
        self.start_timeout = start_timeout
        self.through_cli = through_cli
        self.ready_line = ""
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def command(self) -> list[str]:
        """The child's command line (``stratus serve`` instead of the module with ``through_cli``)."""
        entry = ["cli.main", "serve"] if self.through_cli else ["service.server"]
        if self.data_dir is None:
            return [sys.executable, "-m", *entry, *self.args]
        cmd = [sys.executable, "-m", *entry, "--data-dir", str(self.data_dir), "--listen", self.listen]
        if self.tls_dir is not None:
            cmd += ["--tls-dir", str(self.tls_dir)]
        elif "--tls-dir" not in self.args:
            cmd.append("--insecure")
        if self.redis_url:
            cmd += ["--redis-url", self.redis_url]
        return cmd + self.args

    def start(self) -> LocalServer:
        """Start the child and wait (``start_timeout``) for its ``serving on HOST:PORT`` line."""
        stderr: IO[bytes] | None = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = open(self.log_path, "ab")  # noqa: SIM115 - the child holds its own copy
        try:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=stderr,
                                         stdin=subprocess.DEVNULL, env=server_env(self.env), text=True)
        finally:
            if stderr is not None:
                stderr.close()
        line = self._first_line()
        match = READY.search(line)
        if not match:
            code = self.stop(signal.SIGKILL)
            where = f"; log: {self.log_path}" if self.log_path else ""
            raise CasError(f"the server did not start: {self.log_tail() or line.strip() or 'no output'} "
                           f"(exit {code}{where})")
        self.ready_line = line.strip()
        host = "127.0.0.1" if match.group(1) in _WILDCARD_HOSTS else match.group(1)
        self.address = f"{host}:{match.group(2)}"
        return self

    def _first_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout=self.start_timeout):
                self.stop(signal.SIGKILL)
                raise CasError(f"the server did not start within {self.start_timeout:.0f} s")
        return self.proc.stdout.readline()

    def log_tail(self) -> str:
        """The last non-empty line of the log file ('' without one)."""
        if self.log_path is None:
            return ""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return lines[-1] if lines else ""

    @property
    def pid(self) -> int:
        """Process id of the child."""
        assert self.proc is not None, "the server was not started"
        return self.proc.pid

    def running(self) -> bool:
        """Whether the child is still alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """Send ``sig`` (SIGTERM: graceful, drains calls, stops Valkey) and wait; SIGKILL after ``timeout``.

        Returns the child's exit code (None if it was never started).
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def kill(self) -> int | None:
        """SIGKILL the server, as a crash would (an embedded Valkey is its own process and survives)."""
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> LocalServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
