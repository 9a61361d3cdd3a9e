"""Remote path validation and normalisation."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import InvalidPathError
from cas.paths import MAX_PATH_BYTES, MAX_SEGMENT_BYTES, misreadable, normalize_path, normalize_prefix


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


BIDI = [0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x061C]
ZERO_WIDTH = [0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]
OTHER_FORMAT = [0x00AD, 0x2061, 0x2064, 0x206A, 0x206F, 0xFFF9, 0xFFFB, 0x110BD, 0x1D173, 0xE0001, 0xE007F]


@pytest.mark.parametrize(
    ("codes", "kind"),
    [(BIDI, "bidirectional control character"), (ZERO_WIDTH, "zero-width character"),
     (OTHER_FORMAT, "invisible format character")],
    ids=["bidi", "zero-width", "other-format"],
)
def test_misreadable_characters_are_refused_by_code_point(codes, kind):
    for code in codes:
        for path in (f"invoice{chr(code)}fdp.exe", f"{chr(code)}a/b", f"a/b{chr(code)}"):
            with pytest.raises(InvalidPathError) as info:
                normalize_path(path)
            assert f"{kind} U+{code:04X} at index {path.index(chr(code))}" in str(info.value)
            with pytest.raises(InvalidPathError):
                normalize_prefix(path + "/")


def test_line_and_paragraph_separators_are_refused():
    for code in (0x2028, 0x2029):
        with pytest.raises(InvalidPathError, match=f"line or paragraph separator U\\+{code:04X}"):
            normalize_path(f"a{chr(code)}b")


def test_the_right_to_left_override_cannot_disguise_an_extension():
    # "report\u202Etxt.exe" shows as "reportexe.txt" in a terminal
    with pytest.raises(InvalidPathError, match="U\\+202E"):
        normalize_path("docs/report\u202etxt.exe")


def test_visible_scripts_and_combining_marks_stay_allowed():
    for path in ("עברית/שלום.txt", "عربي/ملف", "हिन्दी/फ़ाइल", "emoji/🙂.png", "e\u0301"):
        assert normalize_path(path) == unicodedata.normalize("NFC", path)


visible = st.characters(exclude_categories=["Cc", "Cf", "Cs", "Zl", "Zp"], exclude_characters="\\")


@settings(max_examples=500, deadline=None)
@given(st.text(visible, max_size=20), st.characters(categories=["Cf"]), st.text(max_size=20))
def test_any_format_character_anywhere_is_refused_by_code_point(before, bad, after):
    with pytest.raises(InvalidPathError) as info:
        normalize_path(before + bad + after)
    assert f"U+{ord(bad):04X}" in str(info.value)


@settings(max_examples=500, deadline=None)
@given(st.text(visible.filter(lambda c: c != "/"), min_size=1, max_size=40))
def test_names_without_misreadable_characters_are_accepted_unless_dots(name):
    name = unicodedata.normalize("NFC", name)
    if name in (".", "..") or len(name.encode()) > MAX_SEGMENT_BYTES:
        return
    assert all(misreadable(c) is None for c in name)
    assert normalize_path(name) == name


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
    assert not any(unicodedata.category(c) in ("Cf", "Zl", "Zp") for c in result)
    assert normalize_path(result) == result


path_alphabet = st.sampled_from(
    ["a", "/", ".", "..", "\\", "\0", "\n", "\x85", "e\u0301", "\ud800", "日", " ", "\u202e", "\u200b", "\ufeff"]
)


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
