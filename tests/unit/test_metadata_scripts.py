"""The metadata store's Lua scripts: read from package data, shared functions included once."""

from __future__ import annotations

from importlib import resources

import pytest

from service.metadata import scripts


def lua_files() -> list[str]:
    return sorted(f.name for f in resources.files("service.metadata").joinpath("lua").iterdir()
                  if f.name.endswith(".lua"))


def test_every_script_constant_is_a_file_with_its_includes_expanded():
    assert "write_version.lua" in lua_files() and "each_slice.lua" in lua_files()
    write = scripts.WRITE_VERSION
    assert "#include" not in write
    # write_version includes put_version, which includes find_missing, which includes each_slice:
    # each defined once, before what uses it
    for fn in ("each_slice", "find_missing", "put_version"):
        assert write.count(f"local function {fn}(") == 1, fn
    assert write.index("local function each_slice") < write.index("local function find_missing")
    assert write.index("local function find_missing") < write.index("local function put_version")
    assert write.index("local function put_version") < write.index("return put_version(")
    assert scripts.WRITE_VERSIONS.count("local function put_version(") == 1
    assert scripts.ADD_CHUNKS.count("local function each_slice") == 1
    assert "local function" not in scripts.READ_VERSIONS
    # every script through which a writer relies on a chunk resurrects it (garbage collection)
    for script in (scripts.WRITE_VERSION, scripts.ADD_CHUNKS, scripts.MISSING_CHUNKS):
        assert script.count("local function resurrect") == 1


@pytest.mark.parametrize("name", lua_files())
def test_each_file_loads(name):
    text = scripts.load(name)
    assert text.strip() and "#include" not in text


def test_a_missing_script_fails_loudly():
    with pytest.raises(FileNotFoundError):
        scripts.load("no_such_script.lua")
