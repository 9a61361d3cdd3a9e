"""The upload engine at library level (cli.push / cli.upload / cli.smallfiles) against a real server:
a big file, a stream from a pipe, a group of small files, a mixed tree, a file that fails while the
others go on, if-version conflicts, and signing with a key object and with PEM bytes."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import MIB, write_random
from progress_helpers import Recorder

from cas import signing
from cas.errors import VersionConflictError
from cas.manifest import ManifestBuilder
from cli.grouping import SMALL_FILE_MAX
from cli.push import Uploader, UploadOptions
from cli.smallfiles import upload_group
from cli.statecache import CacheScope, StateCache
from cli.tree import Excludes
from cli.upload import commit_request
from proto import stratus_pb2 as pb

RACY_MARGIN_S = 0.25  # the state cache trusts a stat only when the file is older than this


@pytest.fixture
def scope(client, tmp_path) -> CacheScope:
    cache = StateCache(tmp_path / "state")
    yield CacheScope(cache, "test-server", client.server_info().namespace)
    cache.close()


def test_big_file_is_pipelined_and_skipped_when_unchanged(client, scope, prefix, tmp_path):
    path = write_random(tmp_path / "big.bin", 6 * MIB + 11)
    progress = Recorder()
    uploader = Uploader(client, scope, UploadOptions(progress=progress))
    report = uploader.put_file(path, prefix + "big.bin")
    [o] = report.files
    assert report.kind == "file" and report.first_error is None
    assert o.status == "uploaded" and o.version.version == 1 and o.version.size == path.stat().st_size
    assert o.chunks_total > 1 and o.chunks_sent == o.chunks_total and o.bytes_read == path.stat().st_size
    assert progress.started == [(1, path.stat().st_size)] and progress.bytes == path.stat().st_size
    assert progress.outcomes == [o] and progress.finished == 1
    assert client.get_bytes(prefix + "big.bin") == path.read_bytes()

    time.sleep(RACY_MARGIN_S)
    fresh = Uploader(client, scope).put_file(path, prefix + "big.bin")
    assert fresh.files[0].status == "unchanged" and fresh.files[0].chunks_sent == 0
    again = Uploader(client, scope).put_file(path, prefix + "big.bin")
    assert again.files[0].status == "skipped" and again.stats.bytes_read == 0
    assert again.files[0].version.version == fresh.files[0].version.version


def test_stream_from_a_pipe(client, scope, prefix):
    data = os.urandom(3 * MIB + 5)
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as w:
            for start in range(0, len(data), 65536):
                w.write(data[start:start + 65536])

    writer = threading.Thread(target=feed)
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe:
        report = Uploader(client, scope).put_stream(pipe, prefix + "piped")
    writer.join()
    [o] = report.files
    assert report.kind == "stream" and o.status == "uploaded" and o.local == "-"
    assert o.bytes_read == len(data) and o.chunks_total > 1 and report.stats.bytes_scanned == len(data)
    assert client.get_bytes(prefix + "piped") == data


def test_group_of_small_files_counts_shared_chunks_once(client, prefix, tmp_path):
    shared = os.urandom(5000)
    files = {"a.txt": shared, "b.txt": shared, "c.txt": os.urandom(700), "empty": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    os.chmod(tmp_path / "c.txt", 0o600)
    items = [(str(tmp_path / name), prefix + name) for name in files]
    advanced: list[int] = []
    outcomes = upload_group(client.remote, items, advance=advanced.append)
    assert [o.remote for o in outcomes] == [prefix + name for name in files]
    assert all(o.status == "uploaded" and o.version.version == 1 for o in outcomes)
    a, b, c, empty = outcomes
    assert a.chunks_sent == a.chunks_total == 1 and b.chunks_sent == 0 and b.bytes_sent == 0
    assert empty.chunks_total == 0 and empty.version.size == 0
    assert sum(advanced) == sum(len(d) for d in files.values())
    for name, data in files.items():
        assert client.get_bytes(prefix + name) == data
    assert client.stat(prefix + "c.txt").mode == 0o600

    again = upload_group(client.remote, items)
    assert [o.status for o in again] == ["unchanged"] * 4 and sum(o.chunks_sent for o in again) == 0


def build_mixed(root: Path) -> dict[str, bytes]:
    content = {}
    for i in range(300):
        content[f"small/{i % 7}/f{i:03d}.txt"] = os.urandom(100 + i * 13)
    content["big/one.bin"] = os.urandom(SMALL_FILE_MAX + 1)
    content["big/two.bin"] = os.urandom(3 * MIB)
    content["empty"] = b""
    for rel, data in content.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return content


def test_mixed_tree_every_file_once(client, scope, prefix, tmp_path):
    src = tmp_path / "src"
    content = build_mixed(src)
    progress = Recorder()
    report = Uploader(client, scope, UploadOptions(jobs=3, progress=progress)).put_tree(src, prefix)
    assert report.kind == "tree" and report.stopped is None and report.first_error is None
    assert sorted(o.remote for o in report.files) == sorted(prefix + rel for rel in content)
    assert all(o.status == "uploaded" for o in report.files)
    assert report.stats.files_uploaded == len(content) and report.stats.bytes_read == sum(map(len, content.values()))
    assert progress.started == [(len(content), sum(map(len, content.values())))]
    assert progress.bytes == sum(map(len, content.values())) and len(progress.outcomes) == len(content)
    listed = {v.path: v for v in client.iter_files(prefix)}
    for rel, data in content.items():
        assert listed[prefix + rel].size == len(data)
    for rel in ("big/two.bin", "small/3/f010.txt", "empty"):
        assert client.get_bytes(prefix + rel) == content[rel]


def test_one_failed_file_does_not_stop_the_others(client, scope, prefix, tmp_path):
    src = tmp_path / "src"
    content = build_mixed(src)
    small_bad, big_bad = "small/2/f002.txt", "big/one.bin"

    def break_two_files() -> None:
        # After the walk, before anything is read: both become unreadable as files.
        for rel in (small_bad, big_bad):
            (src / rel).unlink()
            (src / rel).mkdir()

    report = Uploader(client, scope, UploadOptions(progress=Recorder(break_two_files))).put_tree(src, prefix)
    failed = {o.remote: o for o in report.failures}
    assert set(failed) == {prefix + small_bad, prefix + big_bad} and report.stopped is None
    assert isinstance(failed[prefix + small_bad].error, OSError)
    assert failed[prefix + big_bad].error is not None and failed[prefix + big_bad].version is None
    committed = {o.remote for o in report.files if o.committed}
    assert committed == {prefix + rel for rel in content} - set(failed)
    listed = {v.path for v in client.iter_files(prefix)}
    assert listed == committed
    assert report.stats.files_failed == 2 and report.stats.files_uploaded == len(content) - 2


def test_if_version_conflict(client, scope, prefix, tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"first")
    uploader = Uploader(client, scope, UploadOptions(use_cache=False))
    with pytest.raises(VersionConflictError):
        uploader.put_file(path, prefix + "doc.txt", if_version=3)
    assert uploader.put_file(path, prefix + "doc.txt", if_version=0).files[0].version.version == 1
    path.write_bytes(b"second")
    with pytest.raises(VersionConflictError):
        uploader.put_file(path, prefix + "doc.txt", if_version=0)
    assert uploader.put_file(path, prefix + "doc.txt", if_version=1).files[0].version.version == 2
    assert client.get_bytes(prefix + "doc.txt") == b"second"


@pytest.mark.parametrize("form", ["object", "pem"])
def test_signing_with_a_key_object_or_pem_bytes(client, scope, prefix, tmp_path, form):
    pem = signing.generate_key().private_pem
    key = signing.private_key_from_pem(pem) if form == "object" else pem
    public = signing.public_key_bytes(signing.private_key_from_pem(pem))
    src = tmp_path / "src"
    write_random(src / "big.bin", 2 * MIB)
    (src / "small.txt").write_bytes(b"signed small file")
    report = Uploader(client, scope, UploadOptions(sign_key=key)).put_tree(src, prefix)
    assert {o.status for o in report.files} == {"uploaded"}
    stream = Uploader(client, scope, UploadOptions(sign_key=key)).put_stream(
        open(src / "small.txt", "rb"), prefix + "streamed")  # noqa: SIM115 - closed with the test's tmp_path
    assert stream.files[0].status == "uploaded"
    for rel in ("big.bin", "small.txt", "streamed"):
        info = client.stat(prefix + rel)
        assert bytes(info.signer_public_key) == public and info.signature
        manifest = client.stub.GetManifest(pb.GetManifestRequest(path=prefix + rel))
        signing.verify_version(public, bytes(info.signature), prefix + rel, bytes(info.manifest_digest),
                               manifest.manifest.file_digest, info.size)


def test_one_commit_request_builder_accepts_both_key_forms():
    pem = signing.generate_key().private_pem
    builder = ManifestBuilder()
    builder.add(b"\x01" * 32, 10)
    manifest = builder.build(b"\x02" * 32)
    by_object = commit_request("p", manifest, mode=0o644, mtime_ns=1, sign_key=signing.private_key_from_pem(pem))
    by_pem = commit_request("p", manifest, mode=0o644, mtime_ns=1, sign_key=pem)
    assert by_object == by_pem and by_object.signature and not by_object.HasField("if_version")
    assert commit_request("p", manifest, mode=0, mtime_ns=0, if_version=0).HasField("if_version")


def test_tree_options_excludes_and_delete(client, scope, prefix, tmp_path):
    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "a.txt").write_bytes(b"a")
    (src / "keep" / "b.log").write_bytes(b"b")
    (src / "gone.txt").write_bytes(b"g")
    Uploader(client, scope).put_tree(src, prefix)
    (src / "gone.txt").unlink()
    shutil.rmtree(src / "keep")
    (src / "keep").mkdir()
    (src / "keep" / "a.txt").write_bytes(b"a")
    (src / "keep" / "b.log").write_bytes(b"b")
    opts = UploadOptions(delete=True, excludes=Excludes(["*.log"]))
    report = Uploader(client, scope, opts).put_tree(src, prefix)
    assert [o.remote for o in report.files if o.status == "deleted"] == [prefix + "gone.txt"]
    assert sorted(v.path for v in client.iter_files(prefix)) == [prefix + "keep/a.txt", prefix + "keep/b.log"]
