"""Running and equipping a server: ``serve``, ``certs init``, ``keys init``.

These and ``demo`` are the only commands that import the server side (``service``); the client
commands never do.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.errors import UsageError
from cli.lazy import lazy
from cli.runtime import Runtime
from cli.settings import default_tls_dir

if TYPE_CHECKING:
    import asyncio
    import logging
else:  # serve only
    asyncio = lazy("asyncio")
    logging = lazy("logging")

SERVE_EPILOG = """[bold]Examples[/bold]

  stratus certs init && stratus serve     [dim]# mTLS, default TLS dir[/dim]
  stratus serve --data-dir ~/vault --tls-dir ~/tls --listen 0.0.0.0:7420
  stratus serve --insecure                [dim]# plaintext, loopback only[/dim]
  stratus serve --redis-url redis://127.0.0.1:6379
  stratus serve --config server.toml      [dim]# STRATUS_* variables override it[/dim]

Without --redis-url the server runs a private Valkey in the data dir.
"""

CERTS_EPILOG = """[bold]Examples[/bold]

  stratus certs init                      [dim]# into the default TLS dir[/dim]
  stratus certs init ./tls --server-name vault.example.com \\
      --client alice --client backup-bot
"""

KEYS_EPILOG = """[bold]Examples[/bold]

  stratus keys init ~/.stratus/key        [dim]# writes key and key.pub[/dim]
  stratus put --sign ~/.stratus/key q3.pdf reports/q3.pdf
  stratus get --verify-key ~/.stratus/key.pub reports/q3.pdf q3.pdf
"""

ADMIN_EPILOG = """[bold]Examples[/bold]

  stratus admin check                     [dim]# every chunk's header, every index entry's file[/dim]
  stratus admin check --read-data         [dim]# also decode and BLAKE3-verify every chunk[/dim]

Exit code 5 when chunks are damaged or missing: they are repaired by the next upload of the same
content (put the affected files again).

  stratus admin rebuild-index --data-dir ~/vault --redis-url redis://127.0.0.1:6379
                                          [dim]# server stopped: metadata from the data dir[/dim]
  stratus admin migrate --data-dir ~/vault [dim]# server stopped: one file per chunk -> packs[/dim]
"""

admin_app = typer.Typer(help="Store maintenance (needs the admin role).", no_args_is_help=True)
certs_app = typer.Typer(help="Development certificates for mutual TLS.", no_args_is_help=True)
keys_app = typer.Typer(help="Ed25519 signing keys.", no_args_is_help=True)


def serve(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR", help="Chunks, manifests, Valkey.")] = None,
    listen: Annotated[str | None, typer.Option("--listen", metavar="HOST:PORT", help="Default 127.0.0.1:7420.")] = None,
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", metavar="URL", help="External Redis/Valkey (default: embedded Valkey in the data dir).")] = None,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE", help="TOML or JSON settings.")] = None,
    tls_dir: Annotated[str | None, typer.Option("--tls-dir", metavar="DIR", help="ca.pem, server.pem, ...")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Plaintext (loopback only).")] = False,
    insecure_any_host: Annotated[bool, typer.Option(
        "--insecure-any-host", help="Allow plaintext on a non-loopback address.")] = False,
    access_file: Annotated[str | None, typer.Option(
        "--access-file", metavar="FILE", help="Access policy (who may read/write which prefixes).")] = None,
    audit_log: Annotated[str | None, typer.Option(
        "--audit-log", metavar="FILE", help="Append one JSON line per call (- for stderr).")] = None,
) -> None:
    """Run the StratusVault server until Ctrl-C or SIGTERM (in-flight calls are drained)."""
    from service.config import ConfigError, load_config
    from service.server import run

    rt = Runtime.of(ctx)
    overrides = {
        "data_dir": data_dir, "listen": listen, "redis_url": redis_url,
        # the global --tls-dir / --insecure count too: `stratus --insecure serve` does what it says
        "tls_dir": tls_dir or rt.tls_dir, "insecure": (insecure or rt.insecure) or None,
        "insecure_any_host": insecure_any_host or None, "access_file": access_file, "audit_log": audit_log,
    }
    try:
        settings = load_config(config, overrides)
        if not settings.tls_dir and not settings.insecure and (default_tls_dir() / "server.pem").is_file():
            settings = load_config(config, {**overrides, "tls_dir": str(default_tls_dir())})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.DEBUG if rt.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(settings))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


@certs_app.command("init", epilog=CERTS_EPILOG)
def certs_init(
    ctx: typer.Context,
    directory: Annotated[Path | None, typer.Argument(
        metavar="[DIR]", help="Where to write (default: the TLS dir in your config dir).")] = None,
    server_names: Annotated[list[str] | None, typer.Option(
        "--server-name", metavar="NAME", help="Extra DNS name or IP for the server certificate (repeatable).")] = None,
    clients: Annotated[list[str] | None, typer.Option(
        "--client", metavar="NAME", help="A client certificate (repeatable; the first is the default).")] = None,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity of server and client certificates.")] = 365,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create a private CA, a server certificate and client certificates (dev PKI)."""
    from service.certs import PkiFileExistsError, create_dev_pki

    rt = Runtime.of(ctx)
    target = directory or default_tls_dir()
    try:
        pki = create_dev_pki(target, server_names or [], clients or ["client"], days, overwrite=force)
    except PkiFileExistsError as exc:
        raise UsageError(f"{exc}; pass --force to replace them") from None
    files = {"ca": pki.ca_cert, "ca_key": pki.ca_key, "server": pki.server_cert, "server_key": pki.server_key,
             "clients": {name: {"cert": str(c), "key": str(k)} for name, (c, k) in pki.clients.items()}}
    if rt.out.json:
        rt.out.document({"directory": str(target), **{k: str(v) if isinstance(v, Path) else v
                                                     for k, v in files.items()}})
        return
    rt.out.done(f"created a development PKI in {target}:")
    if rt.out.quiet:
        return
    rt.out.table(["file", "what"], [
        [pki.ca_cert.name, "CA certificate (both sides trust only this)"],
        [pki.ca_key.name, "CA key: only needed to issue more certificates; keep it offline"],
        [f"{pki.server_cert.name}, {pki.server_key.name}", "server certificate and key"],
        *[[f"{c.name}, {k.name}", f"client {name}"] for name, (c, k) in pki.clients.items()],
    ])
    tls = "" if target == default_tls_dir() else f" --tls-dir {target}"
    rt.out.done(f"next: [bold]stratus serve{tls}[/bold], then [bold]stratus{tls} ls[/bold]")


@keys_app.command("init", epilog=KEYS_EPILOG)
def keys_init(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="PATH", help="Private key file; the public key goes to PATH.pub.")],
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
) -> None:
    """Create an Ed25519 key pair for signing versions: PATH (private, 0600) and PATH.pub."""
    from cas import signing

    rt = Runtime.of(ctx)
    public = path.with_name(path.name + ".pub")
    existing = [str(p) for p in (path, public) if p.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist(s); pass --force to replace")
    pair = signing.generate_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    signing.save_private_key(path, pair.private_pem, overwrite=force)
    signing.save_public_key(public, pair.public_key, overwrite=force)
    fingerprint = signing.fingerprint(pair.public_key)
    if rt.out.json:
        rt.out.document({"private_key": str(path), "public_key": str(public), "fingerprint": fingerprint,
                         "public_key_hex": pair.public_key.hex()})
        return
    rt.out.done(f"private key: {path} (keep it secret)\npublic key:  {public}\nfingerprint: {fingerprint}")


@admin_app.command("check", epilog=ADMIN_EPILOG)
def admin_check(
    ctx: typer.Context,
    read_data: Annotated[bool, typer.Option(
        "--read-data", help="Decode and verify every chunk (reads the whole store).")] = False,
) -> None:
    """Verify the server's chunk store; damaged or missing chunks are marked for repair."""
    from cas.digest import to_hex
    from cli.errors import INTEGRITY
    from cli.output import human_bytes

    rt = Runtime.of(ctx)
    r = rt.client.check_store(read_data)
    digests = [to_hex(d) for d in r.damaged_digests]
    if rt.out.json:
        rt.out.document({"chunks_checked": r.chunks_checked, "bytes_checked": r.bytes_checked,
                         "read_data": read_data, "damaged": r.damaged, "missing": r.missing,
                         "awaiting_repair": r.awaiting_repair, "damaged_digests": digests})
    else:
        rt.out.done(f"checked {r.chunks_checked} chunks ({human_bytes(r.bytes_checked)}"
                    f"{', content verified' if read_data else ', headers only'}): {r.damaged} newly damaged, "
                    f"{r.missing} newly missing, {r.awaiting_repair} awaiting repair")
        for d in digests:
            rt.out.print(f"  {d}", markup=False)
    if r.awaiting_repair:
        raise typer.Exit(INTEGRITY)


@admin_app.command("rebuild-index", epilog=ADMIN_EPILOG)
def admin_rebuild_index(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR", help="The stopped server's data dir.")] = None,
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", metavar="URL", help="Empty Redis/Valkey to fill (default: the embedded Valkey).")] = None,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE", help="The server's settings.")] = None,
) -> None:
    """Recreate every version, delete marker, chunk index and the change feed from the data dir
    (after Redis/Valkey lost its data; the server must be stopped, the key prefix empty)."""
    from cli.errors import INTEGRITY
    from service.config import ConfigError, load_config
    from service.rebuild import rebuild_offline

    rt = Runtime.of(ctx)
    try:
        settings = load_config(config, {"data_dir": data_dir, "redis_url": redis_url})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    r = asyncio.run(rebuild_offline(settings))
    namespaces = {ns: vars(n) for ns, n in r.namespaces.items()}
    if rt.out.json:
        rt.out.document({"store_id": r.store_id, "journal_records": r.journal_records,
                         "namespaces": namespaces, "problems": r.problems})
    else:
        rt.out.done(f"rebuilt store {r.store_id} from {r.journal_records} journal records")
        rt.out.table(["namespace", "paths", "versions", "delete markers", "forgotten", "chunks", "feed position"], [
            [ns, n.paths, n.versions, n.delete_markers, n.forgotten, n.chunks, n.feed_position]
            for ns, n in r.namespaces.items()
        ])
        for problem in r.problems:
            rt.out.print(f"  not recovered: {problem}", markup=False)
    if r.problems:
        raise typer.Exit(INTEGRITY)


@admin_app.command("migrate", epilog=ADMIN_EPILOG)
def admin_migrate(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR", help="The stopped server's data dir.")] = None,
    redis_url: Annotated[str | None, typer.Option(
        "--redis-url", metavar="URL", help="The store's Redis/Valkey (default: the embedded Valkey).")] = None,
    config: Annotated[Path | None, typer.Option("--config", metavar="FILE", help="The server's settings.")] = None,
    batch_mib: Annotated[int, typer.Option(
        "--batch-mib", min=1, metavar="MIB", help="Chunk files moved per durable step.")] = 64,
) -> None:
    """Move a files-layout data dir (one file per chunk and manifest) into pack files, with the
    server stopped. Resumable: after an interruption, run it again."""
    from service.config import ConfigError, load_config
    from service.migrate import MigrationProgress, migrate_offline

    rt = Runtime.of(ctx)
    try:
        settings = load_config(config, {"data_dir": data_dir, "redis_url": redis_url})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None

    def progress(p: MigrationProgress) -> None:
        rt.out.note(f"{p.kind}: {p.done}/{p.total} files, {p.bytes_done / 2**20:.1f}/{p.bytes_total / 2**20:.1f} MiB")

    r = asyncio.run(migrate_offline(settings, progress, batch_mib << 20))
    if rt.out.json:
        rt.out.document(vars(r))
    else:
        rt.out.done(f"{'finished the migration' if r.resumed else 'migrated'}: {r.chunks} chunks "
                    f"({r.chunk_bytes / 2**20:.1f} MiB) and {r.manifests} manifests moved into packs")
        for digest in r.damaged:
            rt.out.print(f"  damaged (repaired by the next upload of its content): {digest}", markup=False)
    if r.damaged:
        from cli.errors import INTEGRITY

        raise typer.Exit(INTEGRITY)


def register(app: typer.Typer) -> None:
    """Add the admin commands to the app."""
    app.command("serve", epilog=SERVE_EPILOG)(serve)
    app.add_typer(admin_app, name="admin")
    app.add_typer(certs_app, name="certs")
    app.add_typer(keys_app, name="keys")
