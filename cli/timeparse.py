"""Points in time on the command line: ``--as-of 2024-05-01T12:00``, ``--as-of 2h``, ``--as-of now``.

Accepted forms:

* relative ages, meaning "that long ago": ``90s``, ``90m``, ``2h``, ``3d``, ``1w``, combined as
  ``1h30m`` (units s, m, h, d, w; decimals allowed: ``1.5h``);
* ISO 8601 dates and times: ``2024-05-01``, ``2024-05-01T12:00``, ``2024-05-01 12:00:05.250``,
  with ``Z`` or an offset (``+02:00``); without one, the local time zone is meant;
* ``now``; ``@SECONDS`` (Unix time, decimals allowed).
"""

from __future__ import annotations

import datetime as dt
import re
import time

from cli.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"(?:(\d+(?:\.\d+)?)([smhdw]))+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_time_ms(text: str, now_ms: int | None = None) -> int:
    """Return the Unix time in milliseconds that ``text`` names; UsageError if it names none."""
    raw = text.strip()
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    lowered = raw.lower()
    if lowered == "now":
        return now
    if lowered.startswith("@"):
        try:
            return int(float(lowered[1:]) * 1000)
        except ValueError:
            raise UsageError(f"cannot read {text!r} as @UNIX_SECONDS") from None
    if _RELATIVE.fullmatch(lowered):
        seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(lowered))
        return now - int(seconds * 1000)
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"cannot read {text!r} as a time: use ISO 8601 (2024-05-01T12:00, 2024-05-01T10:00Z) "
            "or an age such as 90m, 2h, 3d"
        ) from None
    if when.tzinfo is None:
        when = when.astimezone()  # a naive time is local time
    return int(when.timestamp() * 1000)


def format_ms(ms: int, *, utc: bool = False) -> str:
    """A Unix-ms time for people: local ``YYYY-MM-DD HH:MM:SS`` (or ISO 8601 UTC with ``utc``)."""
    if not ms:
        return "-"
    when = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    if utc:
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def iso_ms(ms: int) -> str | None:
    """ISO 8601 UTC with milliseconds for JSON output; None for 0 (unknown)."""
    return format_ms(ms, utc=True) if ms else None
