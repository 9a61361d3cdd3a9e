"""The key schema of the metadata store, written once: every key name is built here.

Keys (``P`` = prefix, default ``sv``; ``{ns}`` is the Redis Cluster hash tag, so every key of
a namespace lives on one slot and the multi-key scripts stay legal on a cluster)::

    P:{ns}:files        ZSET    every path ever committed, score 0 (ZRANGEBYLEX paging)
    P:{ns}:f:<path>     HASH    head: version, created_ms, deleted ("0"/"1")
    P:{ns}:v:<path>     HASH    "<version>" -> JSON record (immutable once written; removed only
                                by a forget, service/retention.py)
    P:{ns}:t:<path>     ZSET    timeline of a path a forget left gaps in: its remaining versions,
                                member the zero-padded number, score created_ms (lua/timeline.lua)
    P:{ns}:events       STREAM  change feed; the cursor is the stream id
    P:{ns}:chunks       HASH    raw 32-byte digest -> uncompressed length
    P:{ns}:stats        HASH    unique_bytes, logical_bytes, file_count, version_count
    P:{ns}:g:<id>:chunks HASH   chunk view of a confined grantee (see service/gate.py), and its
    P:{ns}:g:<id>:stats  HASH   unique_bytes; <id> is a hash of the identity
    P:store-id          STRING  id of the chunk store (data dir) this metadata belongs to
    P:loc:{<hhhh>}      HASH    chunk location index of a pack store, one bucket per first two
                                digest bytes (hex in the hash tag): digest[2:] -> IndexEntry bytes
    P:manifests:loc:{<hhhh>} HASH  the same for the manifests stored as pack records
                                (service/manifests.py), apart so the chunk index lists chunks only

``<path>`` is the UTF-8 path, appended raw: the hash tag is the first ``{...}`` of a key, which is
always the namespace, so braces or colons inside a path cannot move a key to another slot.
"""

from __future__ import annotations

import hashlib
import re

from cas.errors import InvalidInputError

_NS_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
LOCATION_BUCKET_BYTES = 2  # 65,536 buckets: spread over every cluster slot, small listpack hashes


def location_bucket(prefix: str, digest: bytes) -> bytes:
    """The location-index bucket of ``digest`` (its own hash tag, never a namespace's key)."""
    return f"{prefix}:loc:{{{digest[:LOCATION_BUCKET_BYTES].hex()}}}".encode()


def manifest_index_prefix(prefix: str) -> str:
    """The prefix of the location index of manifests stored in packs (see the schema above)."""
    return f"{prefix}:manifests"


def location_pattern(prefix: str) -> str:
    """SCAN pattern matching every location-index bucket under ``prefix``."""
    return f"{prefix}:loc:{{*}}"


class _Keys:
    """Key names of one namespace (bytes, since paths are appended as raw UTF-8)."""

    def __init__(self, prefix: str, ns: str) -> None:
        if not isinstance(ns, str) or not _NS_RE.fullmatch(ns):
            raise InvalidInputError(f"invalid namespace {ns!r}: use 1-64 characters of A-Z a-z 0-9 . _ -")
        self.base = f"{prefix}:{{{ns}}}:".encode()
        self.files = self.base + b"files"
        self.events = self.base + b"events"
        self.chunks = self.base + b"chunks"
        self.stats = self.base + b"stats"

    def head(self, path: bytes) -> bytes:
        return self.base + b"f:" + path

    def versions(self, path: bytes) -> bytes:
        return self.base + b"v:" + path

    def timeline(self, path: bytes) -> bytes:
        return self.base + b"t:" + path

    def chunk_index(self, view: str | None) -> tuple[bytes, bytes]:
        """(chunk index, stats hash) of the namespace, or of one identity's chunk view in it."""
        if view is None:
            return self.chunks, self.stats
        tag = hashlib.sha256(view.encode("utf-8", "surrogatepass")).hexdigest()[:32].encode()
        return self.base + b"g:" + tag + b":chunks", self.base + b"g:" + tag + b":stats"
