"""What every command shares: the global options, the output, a lazily opened connection and cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from cli.lazy import lazy
from cli.output import Output
from cli.settings import ConnectionSettings, cache_dir, resolve

if TYPE_CHECKING:
    from cli.client import StratusClient
    from cli.statecache import StateCache
else:  # gRPC and sqlite load when a command first connects or opens the cache, not for --help
    StratusClient = lazy("cli.client", "StratusClient")
    StateCache = lazy("cli.statecache", "StateCache")


@dataclass
class Runtime:
    """Created by the root callback from the global options; commands reach it with :meth:`of`."""

    out: Output
    server: str | None = None
    tls_dir: str | None = None
    insecure: bool = False
    client_name: str | None = None
    namespace_option: str | None = None  # --namespace: work in a namespace the caller holds a grant on
    debug: bool = False
    _settings: ConnectionSettings | None = field(default=None, repr=False)
    _client: StratusClient | None = field(default=None, repr=False)
    _cache: StateCache | None = field(default=None, repr=False)

    @staticmethod
    def of(ctx: typer.Context) -> Runtime:
        """The Runtime of the running command."""
        obj = ctx.find_root().obj
        if not isinstance(obj, Runtime):  # a command invoked without the root callback (never via the CLI)
            obj = Runtime(Output())
            ctx.find_root().obj = obj
        return obj

    @property
    def settings(self) -> ConnectionSettings:
        """Connection settings from flags, environment and config file (resolved on first use)."""
        if self._settings is None:
            self._settings = resolve(
                server=self.server, tls_dir=self.tls_dir, insecure=self.insecure or None,
                client_name=self.client_name, namespace=self.namespace_option,
            )
        return self._settings

    def use(self, settings: ConnectionSettings) -> None:
        """Connect with these settings instead of resolving flags, environment and config file."""
        self.close()
        self._settings = settings

    @property
    def client(self) -> StratusClient:
        """The connection (opened on first use; no traffic until the first call)."""
        if self._client is None:
            s = self.settings
            self._client = StratusClient.connect(
                s.server, tls_dir=s.tls_dir, insecure=s.insecure, client_name=s.client_name,
                manifest_cache=cache_dir() / "manifests", namespace=s.namespace,
            )
        return self._client

    @property
    def namespace(self) -> str:
        """The namespace the server puts this client in (from ServerInfo, fetched once)."""
        return self.client.server_info().namespace

    @property
    def cache(self) -> StateCache:
        """The local state cache (opened on first use)."""
        if self._cache is None:
            self._cache = StateCache(cache_dir())
        return self._cache

    def close(self) -> None:
        """Close the connection and the cache."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cache is not None:
            if self._cache.problem:
                self.out.note(f"[dim]note: state cache unavailable ({self._cache.problem}); "
                              "unchanged files were read again[/dim]")
            self._cache.close()
            self._cache = None
