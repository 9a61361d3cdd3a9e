"""Audit log: one JSON object per line for every call the server answers.

Each line has the keys ``time`` (UTC, ISO 8601 with milliseconds), ``identity``, ``peer``,
``method``, ``path``, ``version``, ``bytes``, ``status`` and ``duration_ms``; ``namespace`` and
``error`` are added when known, plus any extra fields the caller passes. Values are JSON-escaped
(ASCII only), so a hostile path can never break a line or forge another entry.

Targets follow the server setting ``audit_log``: empty for none (a no-op sink), ``-`` for
stderr, anything else is a file opened for appending with mode 0600 (it names who touched
what). Writes are serialised by a lock, so threads and asyncio tasks can share one log; each
line is a single ``write`` on an ``O_APPEND`` descriptor. A failing disk does not fail calls:
the first error is logged through :mod:`logging` and the log keeps trying.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

log = logging.getLogger(__name__)

_RESERVED = frozenset(
    {"time", "identity", "peer", "method", "path", "version", "bytes", "status", "duration_ms"}
)
_MAX_ERROR_CHARS = 500


def _status_name(status: object) -> str:
    # grpc.StatusCode and other enums log by name ("NOT_FOUND"), everything else as text.
    name = getattr(status, "name", None)
    return name if isinstance(name, str) else str(status)


class AuditLog:
    """A JSON-lines audit sink; build it with :meth:`open`, :meth:`to_file`, :meth:`to_stderr`."""

    def __init__(self, stream: TextIO | None, *, path: Path | None = None) -> None:
        """Write to ``stream`` (or the file ``path``); neither makes a disabled log.

        Prefer the class constructors.
        """
        self._stream = stream
        self._path = path
        self._fd = _open_append(path) if path is not None else None
        self._lock = threading.Lock()
        self.write_errors = 0

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def open(cls, target: str | Path | None) -> AuditLog:
        """From the ``audit_log`` setting: ``""``/None disabled, ``"-"`` stderr, else a file path."""
        if target is None or str(target) == "":
            return cls.disabled()
        if str(target) == "-":
            return cls.to_stderr()
        return cls.to_file(target)

    @classmethod
    def disabled(cls) -> AuditLog:
        """A log that accepts every call and writes nothing."""
        return cls(None)

    @classmethod
    def to_stderr(cls) -> AuditLog:
        """A log on the process's stderr."""
        return cls(sys.stderr)

    @classmethod
    def to_file(cls, path: str | Path) -> AuditLog:
        """A log appended to ``path`` (created with mode 0600 if missing)."""
        return cls(None, path=Path(path))

    @property
    def enabled(self) -> bool:
        """False for the no-op sink."""
        return self._stream is not None or self._fd is not None

    # ---- writing -------------------------------------------------------------------------------

    def record(
        self,
        *,
        method: str,
        status: object = "OK",
        identity: str | None = None,
        peer: str | None = None,
        path: str | None = None,
        version: int | None = None,
        nbytes: int = 0,
        duration_ms: float = 0.0,
        **extra: Any,
    ) -> None:
        """Append one entry (``nbytes`` is written under the key ``bytes``)."""
        if not self.enabled:
            return
        entry: dict[str, Any] = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "identity": identity,
            "peer": peer,
            "method": method,
            "path": path,
            "version": version,
            "bytes": nbytes,
            "status": _status_name(status),
            "duration_ms": round(duration_ms, 3),
        }
        for key, value in extra.items():
            if key in _RESERVED:
                raise ValueError(f"audit field {key!r} is reserved")
            if value is not None:
                entry[key] = value
        line = json.dumps(entry, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                if self._fd is not None:
                    _write_all(self._fd, line.encode("ascii"))
                elif self._stream is not None:
                    self._stream.write(line)
                    self._stream.flush()
            except (OSError, ValueError) as exc:
                self.write_errors += 1
                if self.write_errors == 1:
                    log.error("audit log write failed (further failures are counted, not logged): %s", exc)

    def call(
        self,
        method: str,
        *,
        identity: str | None = None,
        peer: str | None = None,
        path: str | None = None,
        **extra: Any,
    ) -> AuditCall:
        """A context manager timing one call and writing its entry on exit (see :class:`AuditCall`)."""
        return AuditCall(self, method, identity=identity, peer=peer, path=path, extra=extra)

    def observe(self, method: str, context: Any, code: object, seconds: float, **fields: Any) -> None:
        """Hook with the server's call-observer signature: identity and peer come from ``context``."""
        if not self.enabled:
            return
        from service.auth import peer_identity

        try:
            identity = peer_identity(context)
            peer = context.peer()
        except Exception:  # noqa: BLE001 - a broken context must not lose the entry
            identity, peer = None, None
        fields.setdefault("identity", identity)
        fields.setdefault("peer", peer)
        self.record(method=method, status=code, duration_ms=seconds * 1000.0, **fields)

    # ---- lifecycle -----------------------------------------------------------------------------

    def reopen(self) -> None:
        """Reopen the file (after log rotation moved it away); no-op for stderr or disabled logs."""
        if self._path is None:
            return
        fresh = _open_append(self._path)
        with self._lock:
            old, self._fd = self._fd, fresh
        if old is not None:
            os.close(old)

    def close(self) -> None:
        """Stop logging; closes the file if this log opened it."""
        with self._lock:
            fd, self._fd, self._stream, self._path = self._fd, None, None, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AuditCall:
    """One call in progress; fill in ``path``, ``version``, ``nbytes``, ``status`` as they become known.

    On exit the entry is written once. Unless ``status`` was set, it is ``"OK"`` after a normal
    exit and ``"ERROR"`` (with the exception's class and message under ``error``) after an
    exception, which is re-raised.
    """

    def __init__(
        self,
        audit: AuditLog,
        method: str,
        *,
        identity: str | None = None,
        peer: str | None = None,
        path: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self._audit = audit
        self.method = method
        self.identity = identity
        self.peer = peer
        self.path = path
        self.version: int | None = None
        self.nbytes = 0
        self.status: object | None = None
        self.error: str | None = None
        self.extra: dict[str, Any] = dict(extra or {})
        self._started = time.perf_counter()
        self._done = False

    def finish(self, status: object | None = None) -> None:
        """Write the entry now (later calls and the context exit do nothing)."""
        if self._done:
            return
        self._done = True
        if status is not None:
            self.status = status
        self._audit.record(
            method=self.method,
            status=self.status if self.status is not None else "OK",
            identity=self.identity,
            peer=self.peer,
            path=self.path,
            version=self.version,
            nbytes=self.nbytes,
            duration_ms=(time.perf_counter() - self._started) * 1000.0,
            error=self.error,
            **self.extra,
        )

    def __enter__(self) -> AuditCall:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None:
            if self.status is None:
                self.status = "ERROR"
            if self.error is None:
                self.error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        self.finish()


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _write_all(fd: int, data: bytes) -> None:
    # One write() per line keeps lines whole even when several processes append to the file.
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
