"""What every command shares: the global options, the output, and a lazily opened library :class:`Client`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import typer

from cli.lazy import lazy
from cli.output import Output
from cli.settings import ConnectionSettings, resolve

if TYPE_CHECKING:
    from cli.client import StratusClient
    from cli.library import Client
    from cli.statecache import StateCache
else:  # gRPC and sqlite load when a command first connects or opens the cache, not for --help
    Client = lazy("cli.library", "Client")


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
    _library: Client | None = field(default=None, repr=False)

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
    def library(self) -> Client:
        """The library client every command works through (opened on first use; no traffic until a call)."""
        if self._library is None:
            self._library = Client.from_settings(self.settings)
        return self._library

    @property
    def client(self) -> StratusClient:
        """The library client's low-level connection (for the admin commands the library does not cover)."""
        return self.library.connection

    @property
    def namespace(self) -> str:
        """The namespace the server puts this client in (from ServerInfo, fetched once)."""
        return self.library.namespace

    @property
    def cache(self) -> StateCache:
        """The local state cache (opened on first use)."""
        return self.library.state_cache

    def close(self) -> None:
        """Close the client (connection and cache); note once when the state cache could not be used."""
        if self._library is None:
            return
        problem = self._library.cache_problem
        self._library.close()
        self._library = None
        if problem:
            self.out.note(f"[dim]note: state cache unavailable ({problem}); unchanged files were read again[/dim]")
