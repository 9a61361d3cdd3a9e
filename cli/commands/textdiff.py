"""``stratus diff --text``: a unified diff of two versions' contents, for text files small enough to hold."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from cli.errors import UsageError
from cli.output import Output, escape, human_bytes

if TYPE_CHECKING:
    from cli.client import StratusClient
    from cli.results import Version

BINARY = "binary content differs (no text diff)"


def _decode(data: bytes) -> str | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def text_diff(
    client: StratusClient, path: str, base: Version | None, to: Version, max_bytes: int
) -> str:
    """The unified diff of ``base`` (None: empty) and ``to``; a one-line note for binary content."""
    for v in (base, to):
        if v is not None and not v.deleted and v.size > max_bytes:
            raise UsageError(
                f"{path} version {v.version} is {human_bytes(v.size)}, over the --text limit of "
                f"{human_bytes(max_bytes)}; raise it with --max-bytes"
            )
    old = b"" if base is None or base.deleted else client.get_bytes(path, version=base.version)
    new = b"" if to.deleted else client.get_bytes(path, version=to.version)
    old_text, new_text = _decode(old), _decode(new)
    if old_text is None or new_text is None:
        return BINARY if old != new else ""
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
        fromfile=f"{path}@{base.version}" if base else "/dev/null", tofile=f"{path}@{to.version}",
    )
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines)


def render_text_diff(out: Output, unified: str) -> None:
    """Print a unified diff with the usual colours."""
    if not unified:
        out.print("contents are identical")
        return
    for line in unified.splitlines():
        style = ""
        if line.startswith(("+++", "---")):
            style = "bold"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("@@"):
            style = "cyan"
        out.print(f"[{style}]{escape(line)}[/{style}]" if style else escape(line))
