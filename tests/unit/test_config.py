"""Server configuration: defaults, file, STRATUS_* environment, flags; bad input is refused clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.config import ConfigError, load_config


def test_defaults_are_sane():
    config = load_config(environ={})
    assert config.listen == "127.0.0.1:7420" and config.redis_url == ""
    assert config.chunk_params.avg_size == 64 * 1024 and config.compression_level == 3
    assert config.store_format == "packs"


def test_file_then_environment_then_flags(tmp_path: Path):
    toml = tmp_path / "stratus.toml"
    toml.write_text('[server]\ncompression_level = 6\nlisten = "127.0.0.1:9000"\nverify-reads = true\n')
    config = load_config(toml, environ={})
    assert (config.compression_level, config.listen, config.verify_reads) == (6, "127.0.0.1:9000", True)
    config = load_config(toml, environ={"STRATUS_COMPRESSION_LEVEL": "9"})
    assert config.compression_level == 9 and config.listen == "127.0.0.1:9000"
    config = load_config(toml, {"compression_level": 1}, environ={"STRATUS_COMPRESSION_LEVEL": "9"})
    assert config.compression_level == 1
    as_json = tmp_path / "stratus.json"
    as_json.write_text(json.dumps({"max_page_size": 50, "data_dir": "~/vault"}))
    config = load_config(environ={"STRATUS_CONFIG": str(as_json)})
    assert config.max_page_size == 50 and config.data_dir == Path("~/vault").expanduser()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("compresion_level = 3\n", "unknown setting 'compresion_level'"),
        ("compression_level = 'high'\n", "compression_level"),
        ("compression_level = 40\n", "between 1 and 22"),
        ("chunk_min_size = 999999\n", "chunk sizes"),
        ("this is not toml", "not valid TOML"),
        ("store_format = 'pack'\n", "store_format must be one of packs, files"),
        ("pack_size = 1000\n", "pack_size"),
    ],
)
def test_bad_files_are_refused_with_the_setting_named(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, environ={})


def test_bad_environment_value_and_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="insecure"):
        load_config(environ={"STRATUS_INSECURE": "maybe"})
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="either tls_dir or insecure"):
        load_config(environ={"STRATUS_INSECURE": "1", "STRATUS_TLS_DIR": "/x"})


def test_json_file_with_a_server_table_and_unknown_keys(tmp_path: Path):
    as_json = tmp_path / "stratus.json"
    as_json.write_text(json.dumps({"server": {"verify_reads": True, "rate-limit-burst": 7}}))
    config = load_config(as_json, environ={})
    assert config.verify_reads is True and config.rate_limit_burst == 7
    as_json.write_text(json.dumps({"server": {"verify_read": True}}))
    with pytest.raises(ConfigError, match="unknown setting 'verify_read'"):
        load_config(as_json, environ={})
    as_json.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="table of settings"):
        load_config(as_json, environ={})


def test_retention_rules_from_a_file_and_the_environment(tmp_path: Path):
    from cas.retention import UNLIMITED, Duration

    f = tmp_path / "s.toml"
    f.write_text('retention_interval_s = 5\n[[retention]]\nprefix = "backups"\nkeep_daily = 7\n'
                 'keep_monthly = "unlimited"\nkeep_within = "1y2m"\n'
                 '[[retention]]\nnamespace = "team"\nkeep_last = 3\n')
    cfg = load_config(f, environ={})
    assert cfg.retention_interval_s == 5
    first, second = cfg.retention
    assert (first.namespace, first.prefix) == ("default", "backups")
    assert (first.policy.daily, first.policy.monthly, first.policy.within) == (7, UNLIMITED, Duration(1, 2))
    assert (second.namespace, second.prefix, second.policy.last) == ("team", "", 3)
    env = {"STRATUS_RETENTION": json.dumps([{"prefix": "x/", "keep_hourly": 24}])}
    assert load_config(None, environ=env).retention[0].policy.hourly == 24


@pytest.mark.parametrize(("rule", "message"), [
    ({"prefix": "a/"}, r"at least one keep_\* rule"),
    ({"keep_last": -2}, "keep-last must be a whole number"),
    ({"keep_daily": "-5"}, "negative values"),
    ({"keep_within": "2w"}, "invalid duration"),
    ({"keep_last": 1, "namespace": "bad ns"}, "invalid namespace"),
    ({"keep_last": 1, "prefix": "../x"}, "retention rule 1"),
    ({"keep_last": 1, "keep": 2}, "use only the keys"),
])
def test_bad_retention_rules_are_refused(rule: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        load_config(None, environ={"STRATUS_RETENTION": json.dumps([rule])})


def test_retention_interval_must_be_positive():
    with pytest.raises(ConfigError, match="retention_interval_s"):
        load_config(None, environ={"STRATUS_RETENTION_INTERVAL_S": "0"})
