"""Lua scripts of the metadata store, read from ``lua/*.lua`` once, when this module is imported
(see ``keys.py`` for the key schema).

Every key a script touches is passed in KEYS and carries the namespace hash tag, so each script
runs on one slot and stays legal on Redis Cluster. The scripts never use cjson: a version record is
JSON built by Python, prefixed inside the script with the two fields only the script can know
(``{"version":N,"created_ms":T,...``). That fixed prefix lets the read scripts pick ``created_ms``
out with a pattern, and keeps Lua away from the 64-bit integers (sizes, mtimes) that a Lua double
would round.

A script names the shared functions it uses with ``-- #include FILE.lua`` lines at its top; each
included file comes before the script's own text, once, in order of first mention.
"""

from __future__ import annotations

import re
from importlib import resources

_INCLUDE = re.compile(r"^-- #include (\S+\.lua)\n", re.MULTILINE)


def load(name: str) -> str:
    """The full text of script ``lua/<name>``: its includes (recursively, each once), then itself."""
    return "".join(_expand(name, set()))


def _expand(name: str, seen: set[str]) -> list[str]:
    if name in seen:
        return []
    seen.add(name)
    text = resources.files(__package__).joinpath("lua", name).read_text(encoding="utf-8")
    parts: list[str] = []
    for included in _INCLUDE.findall(text):
        parts += _expand(included, seen)
    return [*parts, _INCLUDE.sub("", text)]


WRITE_VERSION = load("write_version.lua")
WRITE_VERSIONS = load("write_versions.lua")
MISSING_CHUNKS = load("missing_chunks.lua")
READ_RECORDS = load("read_records.lua")
READ_VERSIONS = load("read_versions.lua")
ADD_CHUNKS = load("add_chunks.lua")
REMOVE_CHUNKS = load("remove_chunks.lua")
FORGET_VERSIONS = load("forget_versions.lua")
