"""What the CLI prints: rich tables for people, one JSON document (or JSON lines) for scripts.

Results go to stdout; notes, warnings and progress bars go to stderr, so ``stratus --json ...``
always leaves exactly the machine-readable document on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cli.lazy import lazy
from cli.timeparse import format_ms, iso_ms

if TYPE_CHECKING:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cli.results import Event, Version
else:  # rich costs tens of milliseconds to import: only output for people needs it
    Console = lazy("rich.console", "Console")
    escape = lazy("rich.markup", "escape")
    Table = lazy("rich.table", "Table")


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover - unreachable


def signer_name(key: bytes | str) -> str | None:
    """A signer's key fingerprint for display (None when unsigned); ``key`` raw or in hex."""
    if not key:
        return None
    from cas import signing  # lazily: cryptography is slow to import and rarely needed

    try:
        raw = bytes.fromhex(key) if isinstance(key, str) else bytes(key)
        return signing.fingerprint(raw)
    except Exception:  # noqa: BLE001 - a bad key from the server is shown, not fatal
        return "invalid:" + (key if isinstance(key, str) else bytes(key).hex())[:16]


def version_dict(v: Version) -> dict[str, Any]:
    """A version as a JSON-ready dict (digests in hex, times in ISO 8601 UTC and Unix units)."""
    return {
        "path": v.path,
        "version": v.version,
        "deleted": v.deleted,
        "size": v.size,
        "created": iso_ms(v.created_ms),
        "created_ms": v.created_ms,
        "identity": v.identity,
        "mode": f"{v.mode:04o}" if v.mode else None,
        "mtime": iso_ms(v.mtime_ns // 1_000_000),
        "mtime_ns": v.mtime_ns,
        "manifest_digest": v.manifest_digest,
        "file_digest": v.file_digest,
        "chunk_count": v.chunk_count,
        "new_chunks": v.new_chunks,
        "shared_chunks": max(v.chunk_count - v.new_chunks, 0),
        "new_bytes": v.new_bytes,
        "signed": v.signed,
        "signer": signer_name(v.signer_public_key),
    }


def event_dict(e: Event) -> dict[str, Any]:
    """A change-feed event as a JSON-ready dict."""
    return {
        "cursor": e.cursor, "kind": e.kind, "path": e.path, "version": e.version, "size": e.size,
        "time": iso_ms(e.time_ms), "time_ms": e.time_ms, "identity": e.identity,
        "manifest_digest": e.manifest_digest,
    }


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


class Output:
    """Printing for one command: ``json`` switches to machine output, ``quiet`` drops notes."""

    def __init__(self, *, json_mode: bool = False, quiet: bool = False) -> None:
        self.json = json_mode
        self.quiet = quiet

    # Off a terminal (a pipe, a file) nothing is wrapped at an imaginary 80 columns.
    @cached_property
    def stdout(self) -> Console:
        """The rich console on stdout (made on first use)."""
        return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=None if _isatty(sys.stdout) else 4096)

    @cached_property
    def stderr(self) -> Console:
        """The rich console on stderr (made on first use)."""
        return Console(file=sys.stderr, highlight=False, soft_wrap=True, width=None if _isatty(sys.stderr) else 4096)

    @property
    def interactive(self) -> bool:
        """Whether progress bars may be drawn (stderr is a terminal and nobody asked for silence)."""
        return not self.quiet and _isatty(sys.stderr)

    def document(self, doc: Any) -> None:  # noqa: ANN401 - any JSON-ready value
        """Print one JSON document on stdout: indented on a terminal, else one compact line.

        Off a terminal the document goes to a program, and the compact form is written by the C
        encoder (``indent`` falls back to the pure-Python one: over a second for a 10,000-file put)."""
        if _isatty(sys.stdout):
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")
        else:
            sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def json_line(self, doc: Any) -> None:  # noqa: ANN401 - any JSON-ready value
        """Print one compact JSON line on stdout (for streams such as ``watch``)."""
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def print(self, text: str = "", *, markup: bool = True) -> None:
        """A result line on stdout (people's output; not used under --json)."""
        self.stdout.print(text, markup=markup)

    def done(self, text: str) -> None:
        """The summary of an action (put, get, rm, ...) on stdout; dropped by --quiet."""
        if not self.quiet:
            self.stdout.print(text)

    def note(self, text: str) -> None:
        """Something worth knowing, on stderr; dropped by --quiet."""
        if not self.quiet:
            self.stderr.print(text)

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[object]], *, title: str | None = None,
        right: Iterable[str] = (),
    ) -> None:
        """A rich table on stdout; ``right`` names columns to right-align (numbers)."""
        aligned = set(right)
        table = Table(title=title, box=None, header_style="bold", pad_edge=False)
        for name in columns:
            table.add_column(name, justify="right" if name in aligned else "left", overflow="fold")
        for row in rows:
            table.add_row(*(escape(str(cell)) for cell in row))
        self.stdout.print(table)

    def pairs(self, items: Iterable[tuple[str, object]], *, title: str | None = None) -> None:
        """A two-column key/value table on stdout."""
        table = Table(title=title, box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for key, value in items:
            table.add_row(escape(key), escape("-" if value is None or value == "" else str(value)))
        self.stdout.print(table)


def version_row(v: Version) -> list[str]:
    """The columns ``ls`` shows for a file."""
    return [v.path, str(v.version), human_bytes(v.size), format_ms(v.mtime_ns // 1_000_000), v.identity or "-"]
