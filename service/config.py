"""Server configuration: defaults, a TOML or JSON file, ``STRATUS_*`` environment overrides.

Precedence, lowest first: built-in defaults, the config file, environment variables, command-line
flags. Every setting has a default that is safe for a single machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from cas.chunker import ChunkParams
from cas.errors import InvalidInputError
from cas.paths import normalize_prefix
from cas.retention import Duration, RetentionPolicy, parse_count
from service.access import is_valid_namespace

DEFAULT_LISTEN = "127.0.0.1:7420"
MIB = 1024 * 1024
STORE_FORMATS = ("packs", "files")


class ConfigError(InvalidInputError):
    """A configuration file or value that cannot be used."""


@dataclass(frozen=True)
class RetentionRule:
    """A retention policy the server applies on its own to every path under ``prefix`` of
    ``namespace``, every ``retention_interval_s`` (service/retention_schedule.py)."""

    namespace: str
    prefix: str
    policy: RetentionPolicy


_RULE_KEYS = {"namespace", "prefix", "keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
              "keep_yearly", "keep_within"}


def parse_retention_rules(raw: Any) -> tuple[RetentionRule, ...]:
    """The ``retention`` setting: a list of tables (a JSON text in ``STRATUS_RETENTION``), each with
    ``namespace`` (default "default"), ``prefix`` ("" = the whole namespace) and at least one of
    ``keep_last`` ... ``keep_yearly`` (a number, -1 or "unlimited") and ``keep_within`` ("30d")."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError as exc:
            raise ConfigError(f"setting 'retention': not a JSON list of rules ({exc})") from exc
    if not isinstance(raw, list | tuple):
        raise ConfigError("setting 'retention' must be a list of tables ([[retention]] in TOML)")
    rules = []
    for n, item in enumerate(raw):
        where = f"retention rule {n + 1}"
        if isinstance(item, RetentionRule):
            rules.append(item)
            continue
        if not isinstance(item, dict) or set(item) - _RULE_KEYS:
            raise ConfigError(f"{where}: use only the keys {', '.join(sorted(_RULE_KEYS))}")
        namespace = str(item.get("namespace", "default"))
        if not is_valid_namespace(namespace):
            raise ConfigError(f"{where}: invalid namespace {namespace!r}")
        try:
            prefix = normalize_prefix(str(item.get("prefix", "")))
            policy = RetentionPolicy(
                **{rule: parse_count(item.get(f"keep_{rule}", 0), rule)
                   for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly")},
                within=Duration.parse(str(item.get("keep_within", ""))),
            )
        except InvalidInputError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if policy.is_empty():
            raise ConfigError(f"{where}: set at least one keep_* rule")
        rules.append(RetentionRule(namespace, prefix, policy))
    return tuple(rules)


def default_data_dir() -> Path:
    """Where a server keeps its data when ``--data-dir`` is not given."""
    return Path(platformdirs.user_data_dir("stratusvault"))


@dataclass
class ServerConfig:
    """Everything ``stratus serve`` can be told. Field names double as config-file keys."""

    data_dir: Path = field(default_factory=default_data_dir)
    listen: str = DEFAULT_LISTEN
    redis_url: str = ""  # empty: start the embedded Valkey inside data_dir
    redis_prefix: str = "sv"  # first part of every key, so one Redis can hold several stores
    tls_dir: str = ""
    insecure: bool = False
    insecure_any_host: bool = False
    access_file: str = ""
    audit_log: str = ""  # a file path, "-" for stderr, empty for none

    chunk_min_size: int = 16 * 1024
    chunk_avg_size: int = 64 * 1024
    chunk_max_size: int = 256 * 1024
    compression_level: int = 3
    # Chunk layout of a new data dir: "packs" (records appended to pack files, located through an
    # index in Redis/Valkey) or "files" (one file per chunk). A data dir keeps the layout it has.
    store_format: str = "packs"
    pack_size: int = 32 * MIB  # a pack is sealed once it reaches this size
    # Store an uploaded chunk as a similarity delta against a base the client hints at
    # (ChunkData.base_hints; packs layout only). False: hints are ignored and not announced.
    delta_hints: bool = True

    max_message_bytes: int = 64 * MIB  # bounds CommitFile manifests: ~1.6M chunks, ~100 GiB files
    batch_bytes: int = 2 * MIB
    flush_bytes: int = 16 * MIB  # uploaded chunks share one durability barrier per this many bytes
    max_page_size: int = 1000
    default_page_size: int = 100
    max_manifest_chunks: int = 1_500_000
    max_find_digests: int = 100_000
    max_batch_files: int = 1000  # entries per CommitFiles / GetManifests call
    # Admission (service/admission.py): the totals bound the whole server, the per-identity limits
    # bound one caller's share of them. A call over a limit waits at most admission_wait_s for a
    # slot, then gets RESOURCE_EXHAUSTED with retry_after_ms in its ErrorDetail.
    max_concurrent_uploads: int = 64  # PutChunks + Upload streams, all identities together
    max_concurrent_downloads: int = 64  # GetChunks + Download streams, all identities together
    max_uploads_per_identity: int = 16
    max_downloads_per_identity: int = 16
    max_inflight_bytes_per_identity: int = 64 * MIB  # received upload frames not yet on disk
    admission_wait_s: float = 1.0
    # Bounded work per PutChunks message, checked before anything is decoded or written: chunk
    # count, chunks smaller than chunk_min_size (only the last chunk of a file or a small file may
    # be), and the uncompressed bytes the frame headers declare (what verification costs).
    max_chunks_per_message: int = 4096  # 32 x batch_bytes / chunk_min_size
    max_small_chunks_per_message: int = 1024
    max_message_raw_bytes: int = 256 * MIB
    # Uploaded chunks per second per identity (every chunk of a message counts, refused or not):
    # past the burst an identity's next message is read, or its next stream admitted, only once
    # its debt is paid. This bounds the server CPU one identity's uploads take. 0 disables.
    upload_chunks_per_second: float = 5000.0
    upload_chunks_burst: int = 20_000
    # An upload stream with no message for this long ends, and so does a download stream whose client takes none.
    stream_idle_timeout_s: float = 60.0
    upload_call_timeout_s: float = 3600.0  # total time one PutChunks or Upload call may take
    # HTTP/2: ping idle connections so dead peers are found, bound streams per connection.
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_streams_per_connection: int = 256
    connection_idle_timeout_s: float = 900.0  # a connection without calls is closed after this
    rate_limit_per_second: float = 0.0  # calls per identity; 0 disables
    rate_limit_burst: int = 100
    # Re-hash chunks before GetChunks sends them. Off by default: every client verifies every chunk
    # and the whole file anyway, and this halves the server's CPU per byte served.
    verify_reads: bool = False
    # GetChunks answers a chunk with a delta frame against chunks the client says it holds (and the
    # caller's namespace holds) when that is clearly smaller; each base proposed costs the caller one
    # token of its upload_chunks_per_second budget, and a window is sent plain when that is short.
    # GetManifest answers in the delta form against the manifest the client holds (same switch).
    delta_downloads: bool = True
    io_threads: int = 0  # 0: twice the CPU count
    # Garbage collection (service/gc.py, README "Garbage collection"): a background collection every
    # gc_interval_s (0: only `stratus admin gc`); unreferenced chunks are condemned, then dropped
    # gc_grace_s later unless a writer touched them; packs whose live bytes fall below
    # gc_repack_live_fraction of their size are rewritten when that gives back gc_min_reclaim_bytes.
    gc_interval_s: float = 86400.0
    gc_grace_s: float = 3600.0
    gc_repack_live_fraction: float = 0.5
    gc_min_reclaim_bytes: int = 0
    gc_lock_ttl_s: float = 15.0
    gc_repack_duty: float = 0.5  # mark, rebase and repack pause so each works at most this fraction of the time
    # Retention rules the server applies itself (service/retention_schedule.py), every this often.
    retention: tuple[RetentionRule, ...] = ()
    retention_interval_s: float = 3600.0
    shutdown_grace_seconds: float = 10.0

    @property
    def chunk_params(self) -> ChunkParams:
        """The chunking parameters every client must use."""
        return ChunkParams(self.chunk_min_size, self.chunk_avg_size, self.chunk_max_size)

    def validate(self) -> ServerConfig:
        """Check cross-field constraints; raises ConfigError naming the bad setting."""
        try:
            self.chunk_params  # noqa: B018 - ChunkParams validates itself
        except ValueError as exc:
            raise ConfigError(f"chunk sizes: {exc}") from exc
        if not 1 <= self.compression_level <= 22:
            raise ConfigError("compression_level must be between 1 and 22")
        if self.batch_bytes + self.chunk_max_size * 2 > self.max_message_bytes:
            raise ConfigError("max_message_bytes must exceed batch_bytes by at least two maximum chunks")
        for name in ("max_page_size", "default_page_size", "max_batch_files", "max_concurrent_uploads",
                     "max_concurrent_downloads", "max_uploads_per_identity", "max_downloads_per_identity",
                     "max_chunks_per_message", "max_streams_per_connection"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        for name in ("stream_idle_timeout_s", "upload_call_timeout_s", "keepalive_time_s", "keepalive_timeout_s",
                     "connection_idle_timeout_s", "retention_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.upload_chunks_per_second > 0 and self.upload_chunks_burst < self.max_chunks_per_message:
            raise ConfigError("upload_chunks_burst must be at least max_chunks_per_message")
        if self.admission_wait_s < 0 or self.max_small_chunks_per_message < 0:
            raise ConfigError("admission_wait_s and max_small_chunks_per_message cannot be negative")
        if self.max_inflight_bytes_per_identity < self.max_message_bytes:
            raise ConfigError("max_inflight_bytes_per_identity must be at least max_message_bytes")
        if self.max_message_raw_bytes < self.chunk_max_size:
            raise ConfigError("max_message_raw_bytes must be at least chunk_max_size")
        if self.store_format not in STORE_FORMATS:
            raise ConfigError(f"store_format must be one of {', '.join(STORE_FORMATS)}, not {self.store_format!r}")
        if self.pack_size < 4 * self.chunk_max_size:
            raise ConfigError("pack_size must be at least four maximum chunks")
        if self.gc_interval_s < 0 or self.gc_grace_s < 1 or self.gc_lock_ttl_s < 1 or self.gc_min_reclaim_bytes < 0:
            raise ConfigError(
                "gc_interval_s must be >= 0, gc_grace_s and gc_lock_ttl_s >= 1, gc_min_reclaim_bytes >= 0"
            )
        if not 0 <= self.gc_repack_live_fraction <= 1:
            raise ConfigError("gc_repack_live_fraction must be between 0 and 1")
        if not 0.05 <= self.gc_repack_duty <= 1:
            raise ConfigError("gc_repack_duty must be between 0.05 and 1")
        if self.tls_dir and self.insecure:
            raise ConfigError("choose either tls_dir or insecure, not both")
        return self


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    """Turn a file or environment value into the field's type, with a clear error."""
    if name == "retention":
        return parse_retention_rules(raw)
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind in (int, "int"):
            return int(raw)
        if kind in (float, "float"):
            return float(raw)
        if kind in (Path, "Path"):
            return Path(str(raw)).expanduser()
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use value {raw!r}") from exc


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ConfigError(f"config file {path} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data.get("server", data)


def load_config(
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> ServerConfig:
    """Build a validated ServerConfig from a file, ``STRATUS_*`` variables and explicit overrides.

    Unknown keys in the file are refused, so a typo never silently falls back to a default.
    """
    env = os.environ if environ is None else environ
    kinds = {f.name: f.type for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    path = config_file or env.get("STRATUS_CONFIG")
    if path:
        for key, raw in _read_file(Path(path)).items():
            name = key.replace("-", "_")
            if name not in kinds:
                raise ConfigError(f"unknown setting {key!r} in {path}")
            values[name] = _coerce(name, kinds[name], raw)
    for name, kind in kinds.items():
        raw = env.get(f"STRATUS_{name.upper()}")
        if raw is not None:
            values[name] = _coerce(name, kind, raw)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, kinds[name], raw)
    return dataclasses.replace(ServerConfig(), **values).validate()
