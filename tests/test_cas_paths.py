"""Remote path validation and normalisation."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import InvalidPathError
from cas.paths import MAX_PATH_BYTES, MAX_SEGMENT_BYTES, normalize_path, normalize_prefix


@pytest.mark.parametrize(
    "path",
    ["a", "a/b/c.txt", "backups/big.db", ".hidden", "a/.b/..c/...", "spaces in name", "日本/語", "x" * 255, "a-b_c~"],
)
def test_valid_paths_are_unchanged(path):
    assert normalize_path(path) == path


def test_nfd_becomes_nfc():
    nfd = "cafe\u0301/re\u0301sume\u0301.txt"
    assert normalize_path(nfd) == "caf\u00e9/r\u00e9sum\u00e9.txt"
    assert normalize_path(normalize_path(nfd)) == normalize_path(nfd)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("/", "absolute"),
        ("a//b", "empty segment"),
        ("a/", "trailing"),
        ("a//b/", "empty segment"),
        (".", "'.'"),
        ("..", "'..'"),
        ("a/./b", "'.'"),
        ("a/../b", "'..'"),
        ("../x", "'..'"),
        ("a\\b", "backslash"),
        ("a\0b", "NUL"),
        ("a\nb", "U+000A"),
        ("a\x1fb", "U+001F"),
        ("a\x7fb", "U+007F"),
        ("a\x85b", "U+0085"),
        ("a\x9fb", "U+009F"),
        ("a\ud800b", "surrogate"),
        ("x" * 256, "segment 1 is 256 bytes"),
        ("a/" + "é" * 128, "segment 2 is 256 bytes"),
        ("/".join(["abc"] * 1025), "limit is 4096"),
    ],
)
def test_invalid_paths(path, message):
    with pytest.raises(InvalidPathError) as info:
        normalize_path(path)
    assert message in str(info.value)


def test_length_limits_are_inclusive_and_in_utf8_bytes():
    longest = "/".join(["a" * 254] * 16) + "/" + "b" * 16
    assert len(longest.encode()) == MAX_PATH_BYTES
    assert normalize_path(longest) == longest
    assert normalize_path("é" * 127 + "e") == "é" * 127 + "e"  # 255 bytes
    with pytest.raises(InvalidPathError):
        normalize_path(longest + "c")
    assert MAX_SEGMENT_BYTES == 255


def test_not_a_string():
    with pytest.raises(InvalidPathError):
        normalize_path(b"a")  # type: ignore[arg-type]
    with pytest.raises(InvalidPathError):
        normalize_prefix(None)  # type: ignore[arg-type]


def test_prefixes():
    assert normalize_prefix("") == ""
    assert normalize_prefix("a") == "a"
    assert normalize_prefix("a/b/") == "a/b/"
    assert normalize_prefix("cafe\u0301/") == "caf\u00e9/"
    for bad in ["/", "/a", "a//", "../", "a/../b/", "a\0/"]:
        with pytest.raises(InvalidPathError):
            normalize_prefix(bad)


def _check_accepted(result: str) -> None:
    assert unicodedata.is_normalized("NFC", result)
    assert result and not result.startswith("/") and not result.endswith("/")
    segments = result.split("/")
    assert all(s not in ("", ".", "..") for s in segments)
    assert all(len(s.encode()) <= MAX_SEGMENT_BYTES for s in segments)
    assert len(result.encode()) <= MAX_PATH_BYTES
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c == "\\" for c in result)
    assert normalize_path(result) == result


path_alphabet = st.sampled_from(["a", "/", ".", "..", "\\", "\0", "\n", "\x85", "e\u0301", "\ud800", "日", " "])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(path_alphabet, max_size=12).map("".join)))
def test_fuzz_only_invalid_path_errors_escape(text):
    try:
        result = normalize_path(text)
    except InvalidPathError:
        return
    _check_accepted(result)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=40), st.lists(path_alphabet, max_size=12).map("".join)))
def test_fuzz_prefixes(text):
    try:
        result = normalize_prefix(text)
    except InvalidPathError:
        return
    if result:
        _check_accepted(result[:-1] if result.endswith("/") else result)
