"""Namespace metadata in Redis or Valkey: the key schema (``keys.py``), the Lua scripts that change
it atomically (``lua/*.lua``, read by ``scripts.py`` at start-up), the records (``records.py``),
the shared change-feed readers (``feed.py``) and the store that ties them together (``store.py``)."""

from service.metadata.records import Event, NamespaceStats, VersionRecord
from service.metadata.store import MetadataStore

__all__ = ["Event", "MetadataStore", "NamespaceStats", "VersionRecord"]
