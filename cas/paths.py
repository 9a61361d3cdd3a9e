"""Remote path validation: every path stored is relative, ``/``-separated, NFC and harmless.

Normalising to NFC first means that the same name typed on macOS (NFD) and Linux (NFC) is one path.
Everything a filesystem, a terminal or a log line could misread is refused rather than repaired,
so a path never means something other than what the caller saw: control characters, and every
Unicode format character (category Cf) - the bidirectional controls that reorder what a terminal
shows (U+202A-U+202E, U+2066-U+2069, U+200E/U+200F, U+061C), the zero-width characters that make
two names look alike (U+200B-U+200D, U+2060, U+FEFF) and the other invisible ones (U+00AD...),
and the line and paragraph separators U+2028/U+2029.
"""

from __future__ import annotations

import re
import unicodedata

from cas.errors import InvalidPathError

MAX_PATH_BYTES = 4096
MAX_SEGMENT_BYTES = 255


_BIDI_CONTROLS = frozenset(
    [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
)
_ZERO_WIDTH = frozenset([0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF])


_PLAIN_ASCII = re.compile(r"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII but the backslash


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or 0x7F <= code <= 0x9F


def misreadable(ch: str) -> str | None:
    """What kind of misreadable character ``ch`` is (for the error message), or None if it is harmless."""
    code = ord(ch)
    if code in _BIDI_CONTROLS:
        return "bidirectional control character"
    if code in _ZERO_WIDTH:
        return "zero-width character"
    category = unicodedata.category(ch)
    if category == "Cf":
        return "invisible format character"
    if category in ("Zl", "Zp"):
        return "line or paragraph separator"
    return None


def _checked_characters(path: str) -> str:
    """``path`` in NFC; InvalidPathError for a NUL, control or misreadable character or a backslash."""
    path = unicodedata.normalize("NFC", path)
    for index, ch in enumerate(path):
        if ch == "\0":
            raise InvalidPathError(f"path contains a NUL character at index {index}")
        if _is_control(ch):
            raise InvalidPathError(f"path contains control character U+{ord(ch):04X} at index {index}")
        kind = misreadable(ch)
        if kind:
            raise InvalidPathError(f"path contains {kind} U+{ord(ch):04X} at index {index}")
        if ch == "\\":
            raise InvalidPathError(f"path contains a backslash at index {index}; the separator is '/'")
    return path


def normalize_path(path: str) -> str:
    """Return ``path`` in NFC after validating it; raise :class:`InvalidPathError` saying what is wrong."""
    if not isinstance(path, str):
        raise InvalidPathError(f"path must be a string, not {type(path).__name__}")
    if path == "":
        raise InvalidPathError("path is empty")
    # Lone surrogates cannot be encoded as UTF-8 and so cannot name anything; refuse them before NFC.
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPathError(f"path contains an unpaired surrogate at index {exc.start}") from None
    if not _PLAIN_ASCII.fullmatch(path):  # printable ASCII is NFC already and holds none of these
        path = _checked_characters(path)
    size = len(path.encode("utf-8"))
    if size > MAX_PATH_BYTES:
        raise InvalidPathError(f"path is {size} bytes in UTF-8, limit is {MAX_PATH_BYTES}")
    if path.startswith("/"):
        raise InvalidPathError("path is absolute; it must be relative (no leading '/')")
    segments = path.split("/")
    for number, segment in enumerate(segments, start=1):
        if segment == "":
            where = "a trailing '/'" if number == len(segments) else "an empty segment ('//')"
            raise InvalidPathError(f"path has {where}")
        if segment in (".", ".."):
            raise InvalidPathError(f"path segment {number} is {segment!r}; '.' and '..' are not allowed")
        seg_size = len(segment.encode("utf-8"))
        if seg_size > MAX_SEGMENT_BYTES:
            raise InvalidPathError(f"path segment {number} is {seg_size} bytes in UTF-8, limit is {MAX_SEGMENT_BYTES}")
    return path


def normalize_prefix(prefix: str) -> str:
    """Return a listing prefix in NFC: ``""`` (everything), a path, or a path ending in ``/``."""
    if not isinstance(prefix, str):
        raise InvalidPathError(f"prefix must be a string, not {type(prefix).__name__}")
    if prefix == "":
        return ""
    if prefix.endswith("/"):
        body = normalize_path(prefix[:-1] or "/")  # a bare "/" is reported as absolute
        result = body + "/"
        if len(result.encode("utf-8")) > MAX_PATH_BYTES:
            raise InvalidPathError(f"prefix is longer than {MAX_PATH_BYTES} bytes in UTF-8")
        return result
    return normalize_path(prefix)
