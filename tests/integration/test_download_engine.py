"""The download engine used directly as a library (no command line): one file, a stream and a tree
of small and large files go through the same stages and give the same outcome and report types."""

from __future__ import annotations

import io
import os
import sys

import pytest
from cli_helpers import MIB, write_random

from cas.errors import IntegrityError, NotFoundError
from cli.download import GetOutcome
from cli.localdir import UnsafeLocalPathError
from cli.restore import Downloader, GetOptions, GetReport, ProgressEvent
from cli.statecache import StateCache


@pytest.fixture
def cache(tmp_path):
    c = StateCache(tmp_path / "cache")
    yield c
    c.close()


def engine(client, cache, events=None, **kw) -> Downloader:
    return Downloader(client, cache, GetOptions("test-server", progress=events.append if events is not None else None,
                                                **kw))


def test_engine_imports_no_command_line_libraries():
    import subprocess

    code = ("import sys, cli.restore; bad = [m for m in sys.modules if m.split('.')[0] in ('typer', 'rich', "
            "'click')]; print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_tree_file_and_stream_share_one_outcome_type(client, cache, prefix, tmp_path):
    src = tmp_path / "src"
    for i in range(30):
        (src / "small").mkdir(parents=True, exist_ok=True)
        (src / "small" / f"f{i}.txt").write_bytes(os.urandom(100 + i))
    write_random(src / "big.bin", 3 * MIB)
    for path in sorted(src.rglob("*")):
        if path.is_file():
            client.put_file(path, prefix + path.relative_to(src).as_posix())
    events: list[ProgressEvent] = []
    eng = engine(client, cache, events)

    tree = eng.get_tree(prefix, tmp_path / "out", as_of_ms=None)
    assert isinstance(tree, GetReport) and all(isinstance(o, GetOutcome) for o in tree.outcomes)
    assert tree.stats.files_downloaded == 31 and tree.stats.files_failed == 0 and tree.first_error is None
    for path in src.rglob("*"):
        if path.is_file():
            assert (tmp_path / "out" / path.relative_to(src)).read_bytes() == path.read_bytes()
    assert all(o.state is not None for o in tree.outcomes)  # each written file's state, for the cache
    starts = [e for e in events if e.kind == "start"]
    assert len(starts) == 1 and starts[0].files == 31 and starts[0].nbytes == tree.stats.bytes_total
    assert sum(e.nbytes for e in events if e.kind == "bytes") == tree.stats.bytes_total
    assert sum(e.kind == "file" for e in events) == 31

    again = eng.get_tree(prefix, tmp_path / "out", as_of_ms=None)  # the state cache vouches for them now
    assert again.stats.files_downloaded == 0
    assert again.stats.files_skipped_unchanged + again.stats.files_up_to_date == 31

    info = client.stat(prefix + "big.bin")
    one = eng.get_file(info, tmp_path / "copy.bin")
    assert one.kind == "file" and one.outcomes[0].status == "downloaded"
    assert (tmp_path / "copy.bin").read_bytes() == (src / "big.bin").read_bytes()

    sink = io.BytesIO()
    streamed = eng.get_stream(prefix + "big.bin", sink, version=None, as_of_ms=None)
    assert streamed.kind == "stdout" and sink.getvalue() == (src / "big.bin").read_bytes()
    assert streamed.outcomes[0].chunks_fetched == streamed.outcomes[0].chunks_total > 1


def test_per_file_failures_carry_the_typed_error(client, cache, prefix, tmp_path):
    client.put_bytes(b"inside", prefix + "sub/a.txt")
    client.put_bytes(b"top", prefix + "top.txt")
    dst = tmp_path / "dst"
    dst.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst / "sub").symlink_to(outside)
    report = engine(client, cache).get_tree(prefix, dst, as_of_ms=None)
    failed = [o for o in report.outcomes if o.status == "failed"]
    assert [o.remote for o in failed] == [prefix + "sub/a.txt"]
    assert isinstance(report.first_error, UnsafeLocalPathError)
    assert list(outside.iterdir()) == [] and (dst / "top.txt").read_bytes() == b"top"


def test_missing_path_and_signature_errors_are_raised(client, cache, prefix, tmp_path):
    from cas import signing

    eng = engine(client, cache)
    with pytest.raises(NotFoundError):
        eng.locate(prefix + "nothing", version=None, as_of_ms=None)
    client.put_bytes(b"unsigned", prefix + "u")
    pair = signing.generate_key()
    signed = engine(client, cache, verify_key=pair.public_key)
    with pytest.raises(IntegrityError):
        signed.get_file(client.stat(prefix + "u"), tmp_path / "never")
    assert not (tmp_path / "never").exists()
