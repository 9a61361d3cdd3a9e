"""Promises of the README checked against real processes: ``verify_reads``, ``--quiet``,
``serve --config`` and tolerance of unknown protobuf fields."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cli_helpers import MIB, isolated_env, overrides, run_process, write_random
from server_fixtures import RunningServer, drop_prefix, new_prefix
from stored_chunks import flip_chunk

from cas.digest import digest
from cli.client import StratusClient
from cli.localserver import LocalServer
from cli.rpc_errors import error_detail
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc
from service.certs import create_dev_pki, grpc_channel_credentials

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


# ---- verify_reads ------------------------------------------------------------------------------


@pytest.fixture
def verifying_server(redis_url: str, tmp_path: Path) -> Iterator[RunningServer]:
    """A server started with ``verify_reads`` on (through its environment variable)."""
    prefix = new_prefix()
    running = RunningServer(tmp_path / "data", redis_url, prefix, extra_env={"STRATUS_VERIFY_READS": "1"}).start()
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


@pytest.mark.parametrize("content", ["random", "text"])
def test_verify_reads_refuses_a_damaged_chunk_with_data_loss(verifying_server, content):
    """One flipped byte in a stored chunk (raw or zstd frame): GetChunks answers DATA_LOSS itself."""
    data = os.urandom(MIB) if content == "random" else os.urandom(MIB // 2).hex().encode()
    with StratusClient(verifying_server.channel()) as c:
        c.put_bytes(data, "v/f")
        manifest = c.stub.GetManifest(pb.GetManifestRequest(path="v/f")).manifest
        digests = [bytes(ref.digest) for ref in manifest.chunks]
        assert len(digests) > 1
        # healthy chunks are served
        served = [ch.digest for batch in c.stub.GetChunks(pb.GetChunksRequest(digests=digests))
                  for ch in batch.chunks]
        assert served == digests
        flip_chunk(verifying_server.data_dir, digests[1])
        with pytest.raises(grpc.RpcError) as info:
            list(c.stub.GetChunks(pb.GetChunksRequest(digests=[digests[1]])))
        assert info.value.code() == grpc.StatusCode.DATA_LOSS, info.value.details()


# ---- --quiet -------------------------------------------------------------------------------------


def test_quiet_prints_results_only(cli, prefix, tmp_path):
    """--quiet drops notes and the summaries of actions; results (ls, cat to stdout) still print."""
    tree = tmp_path / "tree"
    write_random(tree / "a.bin", 100_000)
    (tree / "link").symlink_to(tree / "a.bin")  # skipped with a note
    local = tmp_path / "restored"

    # the control: without --quiet, put and get print summaries and the skipped link a note
    loud = cli("put", str(tree), prefix + "loud")
    assert loud.stdout.strip() and "link" in loud.stderr
    assert cli("get", prefix + "loud/", str(tmp_path / "loud")).stdout.strip()

    for args in (("put", str(tree), prefix + "q"), ("put", str(tree), prefix + "q"),
                 ("get", prefix + "q/", str(local)), ("rm", prefix + "q/a.bin")):
        quiet = cli("--quiet", *args)
        assert (quiet.stdout, quiet.stderr) == ("", ""), args
    assert (local / "a.bin").read_bytes() == (tree / "a.bin").read_bytes()

    listing = cli("--quiet", "ls", "--deleted", prefix + "q/")
    assert prefix + "q/a.bin" in listing.stdout and listing.stderr == ""
    cat = cli("--quiet", "get", prefix + "loud/a.bin", "-")
    assert cat.stdout_bytes == (tree / "a.bin").read_bytes() and cat.stderr == ""


# ---- serve --config ------------------------------------------------------------------------------


def _serve(args: list[str], env: dict[str, str], tmp: Path) -> tuple[LocalServer, str]:
    """Start ``stratus serve ARGS`` as a real process (stderr in ``tmp/serve.err``); returns it
    and its loopback address once it serves."""
    server = LocalServer(None, args=args, env={**overrides(isolated_env(tmp)), **env}, log=tmp / "serve.err",
                         through_cli=True)
    return server.start(), server.address


def _stop(server: LocalServer) -> None:
    """SIGTERM, and the server must exit 0."""
    assert server.stop(timeout=60) == 0


def _server_info(args: list[str], env: dict[str, str], tmp: Path) -> pb.ServerInfoResponse:
    """ServerInfo from a ``stratus serve`` started with ARGS and ENV, which is then stopped (exit 0)."""
    proc, address = _serve(args, env, tmp)
    try:
        with grpc.insecure_channel(address) as channel:
            return pb_grpc.StratusStub(channel).ServerInfo(pb.ServerInfoRequest())
    finally:
        _stop(proc)


def _audited(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [json.loads(line)["method"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_serve_config_file_then_environment_then_flags(tmp_path, kind):
    """A setting from the file takes effect; STRATUS_* overrides the file; a flag overrides both."""
    audit_file, audit_env, audit_flag = tmp_path / "file.log", tmp_path / "env.log", tmp_path / "flag.log"
    settings = {"compression_level": 7, "max_page_size": 55, "insecure": True,
                "audit_log": str(audit_file), "data_dir": str(tmp_path / "data")}
    config = tmp_path / f"stratus.{kind}"
    if kind == "toml":
        config.write_text("[server]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    else:
        config.write_text(json.dumps(settings))
    base = ["--config", str(config), "--listen", "127.0.0.1:0"]

    info = _server_info(base, {}, tmp_path)
    assert (info.compression_level, info.max_page_size) == (7, 55)
    assert _audited(audit_file) == ["ServerInfo"]

    env = {"STRATUS_COMPRESSION_LEVEL": "9", "STRATUS_AUDIT_LOG": str(audit_env)}
    info = _server_info(base, env, tmp_path)
    assert (info.compression_level, info.max_page_size) == (9, 55)
    assert _audited(audit_env) == ["ServerInfo"] and _audited(audit_file) == ["ServerInfo"]

    _server_info([*base, "--audit-log", str(audit_flag)], env, tmp_path)
    assert _audited(audit_flag) == ["ServerInfo"]
    assert _audited(audit_env) == ["ServerInfo"] and _audited(audit_file) == ["ServerInfo"]


@pytest.mark.parametrize("kind", ["toml", "json"])
def test_serve_config_with_an_unknown_key_is_refused(tmp_path, kind):
    config = tmp_path / f"stratus.{kind}"
    if kind == "toml":
        config.write_text('[server]\ninsecure = true\ncompresion_level = 5\n')
    else:
        config.write_text(json.dumps({"insecure": True, "compresion_level": 5}))
    out = run_process(["serve", "--config", str(config), "--data-dir", str(tmp_path / "data"),
                       "--listen", "127.0.0.1:0"], isolated_env(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "unknown setting 'compresion_level'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "data").exists()


# ---- unknown protobuf fields ---------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _unknown_fields() -> bytes:
    """Fields numbered far past anything in stratus.proto: a varint and a length-delimited one."""
    blob = b"from a newer client"
    return (_varint(9001 << 3 | 0) + _varint(123456789)
            + _varint(9002 << 3 | 2) + _varint(len(blob)) + blob)


def _raw_call(channel: grpc.Channel, method: str, body: bytes) -> bytes:
    """A unary call with hand-made request bytes (no generated stub, no re-serialisation)."""
    call = channel.unary_unary(f"/stratus.v1.Stratus/{method}", request_serializer=None,
                               response_deserializer=None)
    return call(body, timeout=30)


def test_unknown_protobuf_fields_are_ignored(server):
    path = f"unknown-{uuid.uuid4().hex[:10]}/f"
    data = b"hello from the future"
    channel = server.channel()
    with StratusClient(server.channel()) as c:
        c.put_bytes(data, path)
        known = c.stat(path)

    # top level: the same answer as without the unknown fields
    stat = pb.VersionInfo.FromString(
        _raw_call(channel, "Stat", pb.StatRequest(path=path).SerializeToString() + _unknown_fields()))
    assert stat == known
    missing = pb.FindMissingChunksResponse.FromString(_raw_call(
        channel, "FindMissingChunks",
        pb.FindMissingChunksRequest(digests=[digest(data), b"\x01" * 32]).SerializeToString() + _unknown_fields()))
    assert list(missing.missing) == [b"\x01" * 32]

    # nested: unknown fields inside the manifest of a commit, which still commits exactly that manifest
    manifest = pb.Manifest(chunks=[pb.ChunkRef(digest=digest(data), length=len(data))], size=len(data),
                           file_digest=digest(data))
    nested = manifest.SerializeToString() + _unknown_fields()
    body = (pb.CommitFileRequest(path=path + "2", mode=0o600).SerializeToString()
            + _varint(2 << 3 | 2) + _varint(len(nested)) + nested + _unknown_fields())
    committed = pb.CommitFileResponse.FromString(_raw_call(channel, "CommitFile", body))
    assert committed.version.version == 1 and committed.version.manifest_digest == known.manifest_digest
    assert committed.version.mode == 0o600
    with StratusClient(server.channel()) as c:
        assert c.get_bytes(path + "2") == data
    channel.close()


# ---- --insecure-any-host, --client-name, the rate limit per identity, symlinks on the command line --


def test_insecure_any_host_serves_plaintext_off_loopback_and_says_so(tmp_path):
    proc, address = _serve(["--data-dir", str(tmp_path / "data"), "--listen", "0.0.0.0:0", "--insecure",
                            "--insecure-any-host"], {}, tmp_path)
    try:
        with StratusClient.connect(address, insecure=True) as c:
            c.put_bytes(b"open to all", "exposed/f")
            assert c.get_bytes("exposed/f") == b"open to all"
    finally:
        _stop(proc)
    warning = (tmp_path / "serve.err").read_text()
    assert "WARNING" in warning and "0.0.0.0" in warning and "plaintext" in warning.lower()


@pytest.fixture
def tls_pki(tmp_path: Path) -> Path:
    create_dev_pki(tmp_path / "pki", clients=["alice", "bob"])
    return tmp_path / "pki"


def test_client_name_picks_the_certificate(tls_pki, tmp_path):
    """--client-name NAME (or STRATUS_CLIENT_NAME) uses client-NAME.pem: the server sees that identity."""
    proc, address = _serve(["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                            "--tls-dir", str(tls_pki)], {}, tmp_path)
    try:
        env = isolated_env(tmp_path)
        base = ["--server", address, "--tls-dir", str(tls_pki), "--json"]
        default = run_process([*base, "info"], env)
        assert default.returncode == 0, default.stderr
        assert json.loads(default.stdout)["identity"] == "alice"  # client.pem: the first client
        flag = run_process([*base, "--client-name", "bob", "info"], env)
        assert flag.returncode == 0, flag.stderr
        assert json.loads(flag.stdout)["identity"] == "bob"
        by_env = run_process([*base, "info"], {**env, "STRATUS_CLIENT_NAME": "bob"})
        assert json.loads(by_env.stdout)["identity"] == "bob"
        unknown = run_process([*base, "--client-name", "carol", "info"], env)
        assert unknown.returncode != 0 and "client-carol.pem" in unknown.stderr and "Traceback" not in unknown.stderr
    finally:
        _stop(proc)


def test_rate_limit_is_per_identity_over_mtls(tls_pki, tmp_path):
    """A burst of 5 and (practically) no refill: alice's sixth call is refused with a retry-after
    hint; bob, another certificate, still has his whole burst."""
    proc, address = _serve(["--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0",
                            "--tls-dir", str(tls_pki)],
                           {"STRATUS_RATE_LIMIT_PER_SECOND": "0.001", "STRATUS_RATE_LIMIT_BURST": "5"}, tmp_path)
    try:
        stubs = {name: pb_grpc.StratusStub(grpc.secure_channel(address, grpc_channel_credentials(tls_pki, name)))
                 for name in ("alice", "bob")}
        for _ in range(5):
            assert stubs["alice"].ServerInfo(pb.ServerInfoRequest()).identity == "alice"
        with pytest.raises(grpc.RpcError) as info:
            stubs["alice"].ServerInfo(pb.ServerInfoRequest())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_detail(info.value).retry_after_ms > 60_000
        for _ in range(5):
            assert stubs["bob"].ServerInfo(pb.ServerInfoRequest()).identity == "bob"
        with pytest.raises(grpc.RpcError) as info:
            stubs["bob"].ServerInfo(pb.ServerInfoRequest())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        _stop(proc)


def test_a_symlink_named_on_the_command_line_is_followed(cli, prefix, tmp_path):
    """Inside a tree symlinks are skipped; the one named as the source is followed (file or folder)."""
    real = write_random(tmp_path / "real" / "data.bin", 70_000)
    write_random(tmp_path / "real" / "sub" / "more.bin", 1000)
    (tmp_path / "real" / "inner-link").symlink_to(real)
    (tmp_path / "file-link").symlink_to(real)
    (tmp_path / "dir-link").symlink_to(tmp_path / "real")
    doc = cli.json("put", str(tmp_path / "file-link"), prefix + "one")
    assert doc["files"][0]["status"] == "uploaded"
    assert cli("get", prefix + "one", "-").stdout_bytes == real.read_bytes()
    tree = cli.json("put", str(tmp_path / "dir-link"), prefix + "tree")
    assert sorted(f["remote"] for f in tree["files"]) == [prefix + "tree/data.bin", prefix + "tree/sub/more.bin"]
    assert tree["stats"]["symlinks_skipped"] == 1  # the link inside the tree
    assert cli("get", prefix + "tree/data.bin", "-").stdout_bytes == real.read_bytes()
