"""Connection settings of the CLI: flags, then ``STRATUS_*`` variables, then a config file, then defaults.

The config file is ``config.toml`` in the user's config dir (``platformdirs.user_config_dir
("stratusvault")``, e.g. ``~/.config/stratusvault/config.toml``; ``STRATUS_CLIENT_CONFIG`` names
another one)::

    server = "vault.example.com:7420"
    tls_dir = "~/.config/stratusvault/tls"
    client_name = "alice"          # use client-alice.pem instead of client.pem
    namespace = "team-a"           # work in a namespace you hold a grant on (default: your own)
    # insecure = true              # plaintext, for a server started with --insecure

Security mode: the first layer (flags, environment, file) that says ``--insecure`` or names a TLS
dir decides. When none does, the default TLS dir (``<config dir>/tls``, where ``stratus certs
init`` writes by default) is used if it holds a CA certificate; otherwise the command stops with
a message that says what to do.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from cli.errors import UsageError

APP_NAME = "stratusvault"
DEFAULT_SERVER = "127.0.0.1:7420"
_FILE_KEYS = {"server", "tls_dir", "insecure", "client_name", "namespace"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to connect."""

    server: str
    tls_dir: Path | None  # None: plaintext
    insecure: bool
    client_name: str | None
    namespace: str | None = None  # None: the caller's own namespace

    def describe(self) -> str:
        """Short human description, e.g. ``127.0.0.1:7420 (mTLS, /home/me/.config/stratusvault/tls)``."""
        mode = "plaintext" if self.insecure else f"mTLS, {self.tls_dir}"
        return f"{self.server} ({mode})"


def config_dir() -> Path:
    """The user's StratusVault config dir."""
    return Path(platformdirs.user_config_dir(APP_NAME))


def config_file(environ: Mapping[str, str] | None = None) -> Path:
    """The client config file (it need not exist)."""
    env = os.environ if environ is None else environ
    override = env.get("STRATUS_CLIENT_CONFIG")
    return Path(override).expanduser() if override else config_dir() / "config.toml"


def default_tls_dir() -> Path:
    """Where ``stratus certs init`` writes when no DIR is given, and where the CLI looks last."""
    return config_dir() / "tls"


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the local state cache lives (``STRATUS_CACHE_DIR`` overrides the user cache dir)."""
    env = os.environ if environ is None else environ
    override = env.get("STRATUS_CACHE_DIR")
    return Path(override).expanduser() if override else Path(platformdirs.user_cache_dir(APP_NAME))


def parse_bool(name: str, raw: object) -> bool:
    """A boolean setting from a file or the environment; UsageError on anything else."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"{name}: expected a boolean (1/0, true/false), got {raw!r}")


def read_config_file(path: Path) -> dict[str, object]:
    """The settings of a client config file ({} when it does not exist)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("client", data)
    if not isinstance(table, dict):
        raise UsageError(f"config file {path}: [client] must be a table")
    unknown = sorted(set(table) - _FILE_KEYS - {"client"})
    if unknown:
        raise UsageError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(_FILE_KEYS))}")
    return {k: v for k, v in table.items() if k in _FILE_KEYS}


def _layer_from_env(env: Mapping[str, str]) -> dict[str, object]:
    layer: dict[str, object] = {}
    for key in ("server", "tls_dir", "client_name", "namespace"):
        value = env.get(f"STRATUS_{key.upper()}")
        if value:
            layer[key] = value
    if env.get("STRATUS_INSECURE") is not None:
        layer["insecure"] = parse_bool("STRATUS_INSECURE", env["STRATUS_INSECURE"])
    return layer


def _security(layers: list[tuple[str, dict[str, object]]]) -> tuple[Path | None, bool]:
    for where, layer in layers:
        insecure = bool(layer.get("insecure"))
        tls_dir = layer.get("tls_dir")
        if insecure and tls_dir:
            raise UsageError(f"{where}: choose either a TLS dir or insecure, not both")
        if insecure:
            return None, True
        if tls_dir:
            return Path(str(tls_dir)).expanduser(), False
    fallback = default_tls_dir()
    if (fallback / "ca.pem").is_file():
        return fallback, False
    raise UsageError(
        f"no TLS material: pass --tls-dir DIR or set STRATUS_TLS_DIR (create one with `stratus certs init`, "
        f"which writes {fallback} by default), or --insecure for a plaintext server"
    )


def resolve(
    *,
    server: str | None = None,
    tls_dir: str | None = None,
    insecure: bool | None = None,
    client_name: str | None = None,
    namespace: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ConnectionSettings:
    """Combine flags (the arguments), ``STRATUS_*`` variables and the config file."""
    env = os.environ if environ is None else environ
    flags: dict[str, object] = {
        k: v for k, v in
        {"server": server, "tls_dir": tls_dir, "insecure": insecure, "client_name": client_name,
         "namespace": namespace}.items()
        if v not in (None, "", False)
    }
    path = config_file(env)
    layers = [("flags", flags), ("environment", _layer_from_env(env)), (str(path), read_config_file(path))]
    if "insecure" in layers[2][1]:
        layers[2][1]["insecure"] = parse_bool(f"{path}: insecure", layers[2][1]["insecure"])

    def first(key: str) -> object | None:
        for _, layer in layers:
            if layer.get(key):
                return layer[key]
        return None

    tls, plaintext = _security(layers)
    name, ns = first("client_name"), first("namespace")
    return ConnectionSettings(
        server=str(first("server") or DEFAULT_SERVER),
        tls_dir=tls,
        insecure=plaintext,
        client_name=str(name) if name else None,
        namespace=str(ns) if ns else None,
    )
