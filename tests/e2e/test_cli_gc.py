"""``stratus admin gc`` and the garbage figures of ``stratus info``, through the CLI."""

from __future__ import annotations

import pytest
from cli_helpers import Cli, isolated_env
from gc_helpers import FAST_GC, forget_versions, history
from server_fixtures import RunningServer, drop_prefix, new_prefix


@pytest.fixture
def gc_cli(redis_url, tmp_path):
    prefix = new_prefix()
    server = RunningServer(tmp_path / "data", redis_url, prefix, extra_env=FAST_GC).start()
    try:
        yield server, Cli(server.address, tmp_path, isolated_env(tmp_path))
    finally:
        server.kill()
        drop_prefix(redis_url, prefix)


def test_admin_gc_dry_run_then_collect_and_info_shows_what_was_reclaimed(gc_cli, tmp_path):
    server, cli = gc_cli
    for n, data in enumerate(history(5, size=1 << 20, versions=3, change=0.3)):
        (tmp_path / f"v{n}").write_bytes(data)
        cli("put", str(tmp_path / f"v{n}"), "db.bin")
    ns = cli.json("info")["namespace"]
    forget_versions(server.redis_url, server.prefix, ns, "db.bin", keep={3})
    dry = cli.json("admin", "gc", "--dry-run")
    assert dry["dry_run"] and dry["chunks_condemned"] > 0
    assert dry["manifests_removed"] == 0  # small manifests are inline: they go with their records
    done = cli.json("admin", "gc")
    # a dead base of a kept delta record stays where re-encoding that record would cost more
    assert 0 < done["chunks_dropped"] <= dry["chunks_condemned"] and done["freed_bytes"] > 0
    stats = cli.json("info")["stats"]
    assert stats["reclaimed_bytes"] == done["freed_bytes"]
    text = cli("info").stdout
    assert "reclaimable" in text and "reclaimed" in text
    assert "freed" in cli("admin", "gc").stdout
    cli("get", "db.bin", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == (tmp_path / "v2").read_bytes()
    cli("admin", "check", "--read-data")
