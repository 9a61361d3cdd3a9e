"""Compare two manifests of a file: what a delta transfer must move and which byte ranges changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from cas.manifest import Manifest


@dataclass
class ManifestDiff:
    """How NEW relates to OLD.

    Counts are over NEW's chunk references: ``shared_*`` for chunks whose digest also occurs in OLD,
    ``new_*`` for the rest, so ``shared_bytes + new_bytes == new.size``. ``changed`` holds the merged
    ``(offset, length)`` ranges of NEW covered by the absent chunks (their lengths sum to
    ``new_bytes``); ``new_digests`` lists each absent digest once, in first-seen order - what an
    upload has to send.
    """

    shared_chunks: int = 0
    new_chunks: int = 0
    shared_bytes: int = 0
    new_bytes: int = 0
    changed: list[tuple[int, int]] = field(default_factory=list)
    new_digests: list[bytes] = field(default_factory=list)


def diff_manifests(old: Manifest | None, new: Manifest) -> ManifestDiff:
    """Diff ``new`` against ``old`` (``None`` means there was no previous version)."""
    known = {ref.digest for ref in old.chunks} if old is not None else set()
    result = ManifestDiff()
    absent: dict[bytes, None] = {}
    offset = 0
    for ref in new.chunks:
        if ref.digest in known:
            result.shared_chunks += 1
            result.shared_bytes += ref.length
        else:
            result.new_chunks += 1
            result.new_bytes += ref.length
            absent.setdefault(ref.digest)
            last = result.changed[-1] if result.changed else None
            if last is not None and last[0] + last[1] == offset:
                result.changed[-1] = (last[0], last[1] + ref.length)
            else:
                result.changed.append((offset, ref.length))
        offset += ref.length
    result.new_digests = list(absent)
    return result
