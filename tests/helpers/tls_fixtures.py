"""Real mTLS servers for the security tests: a private CA, client certificates, an access file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from server_fixtures import RunningServer, drop_prefix, new_prefix

from cli.client import StratusClient
from service.certs import create_dev_pki


@contextmanager
def tls_server(
    root: Path, redis_url: str, clients: Sequence[str], *, access: str | None = None,
    extra_args: Sequence[str] = (), extra_env: dict[str, str] | None = None,
) -> Iterator[RunningServer]:
    """A server speaking mTLS with a fresh CA in ``root/pki`` (certificates for ``clients``)."""
    create_dev_pki(root / "pki", clients=list(clients))
    args = ["--tls-dir", str(root / "pki"), *extra_args]
    if access is not None:
        (root / "access.toml").write_text(access)
        args += ["--access-file", str(root / "access.toml")]
    prefix = new_prefix()
    running = RunningServer(root / "data", redis_url, prefix, extra_args=args, extra_env=extra_env or {}).start()
    running.pki = root / "pki"  # type: ignore[attr-defined]
    try:
        yield running
    finally:
        running.stop()
        drop_prefix(redis_url, prefix)


def connect(server: RunningServer, name: str, namespace: str | None = None) -> StratusClient:
    """A client with the certificate of ``name`` (optionally working in ``namespace``)."""
    return StratusClient.connect(
        server.address, tls_dir=server.pki, client_name=name, namespace=namespace  # type: ignore[attr-defined]
    )
