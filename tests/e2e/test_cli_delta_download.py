"""``stratus get`` over an old local copy (typer's CliRunner against a real server): the chunks an
edit changed come as delta frames, which the JSON document counts."""

from __future__ import annotations

from cli_helpers import MIB, Cli, isolated_env, write_random

from bench.datasets import scattered_edits

pytest_plugins = ["cli_fixtures"]  # the `cli` and `prefix` fixtures


def test_get_over_the_old_copy_fetches_about_the_edited_bytes(cli, server, prefix, tmp_path):
    remote = prefix + "data.bin"
    elsewhere = tmp_path / "elsewhere"
    other = Cli(server.address, elsewhere, isolated_env(elsewhere))
    src = write_random(elsewhere / "data.bin", 4 * MIB)
    other.json("put", str(src), remote)
    dest = tmp_path / "here" / "data.bin"
    dest.parent.mkdir()
    first = cli.json("get", remote, str(dest))["stats"]
    assert first["bytes_fetched"] >= 4 * MIB and first["chunks_delta"] == 0

    scattered_edits(src)
    other.json("put", str(src), remote)
    doc = cli.json("get", remote, str(dest))
    stats = doc["stats"]
    assert dest.read_bytes() == src.read_bytes()
    assert stats["files_downloaded"] == 1 and stats["chunks_fetched"] >= 10
    assert stats["chunks_delta"] == stats["chunks_fetched"] == doc["files"][0]["chunks_delta"]
    assert stats["bytes_fetched"] < 10 * 4096 * 1.5 + 2 * 4096  # whole chunks: >= 10 x 16 KiB, ~64 KiB each
    assert "as deltas" in cli("get", "--version", "1", remote, str(dest)).stdout
