"""``stratus demo``: the whole product in one command, on a real server with mutual TLS.

In a data dir (``<user data dir>/demo`` unless ``--data-dir``): create dev certificates if there
are none, start ``python -m service.server`` on the embedded Valkey with mTLS, upload a ~24 MiB
sample, change 4 KiB in its middle, upload it again (showing how little travels), show the
history, download both versions and check them, show the store statistics, then keep the server
running for other terminals until Ctrl-C (``--no-wait`` stops it and exits at once).

The server runs as a child process (:class:`cli.localserver.LocalServer`) rather than a thread: it
keeps its own event loop, signal handling and GIL, and a crash on either side cannot corrupt the other.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import platformdirs
import typer

from cas.errors import CasError
from cli.lazy import lazy
from cli.localserver import LocalServer
from cli.output import human_bytes, version_dict
from cli.runtime import Runtime
from cli.settings import APP_NAME, ConnectionSettings

if TYPE_CHECKING:
    from cas.digest import new_hasher
    from cli.restore import Downloader, GetOptions
else:  # hashing and the transfer machinery load when the demo runs
    new_hasher = lazy("cas.digest", "new_hasher")
    GetOptions = lazy("cli.restore", "GetOptions")
    Downloader = lazy("cli.restore", "Downloader")

MIB = 1024 * 1024
REMOTE = "demo/sample.bin"

DEMO_EPILOG = """[bold]Examples[/bold]

  stratus demo                            [dim]# then use the printed command[/dim]
  stratus demo --data-dir /tmp/sv-demo --no-wait
"""


def _start_server(base: Path, tls_dir: Path, listen: str, access: Path) -> LocalServer:
    """The demo's server (mTLS, embedded Valkey, log next to the data); a free port if ``listen`` is taken."""
    server = LocalServer(base / "server", listen=listen, tls_dir=tls_dir, args=["--access-file", str(access)],
                         log=base / "server.log")
    try:
        return server.start()
    except CasError:
        if "cannot listen" not in server.log_tail() or listen.endswith(":0"):
            raise
    host = listen.rsplit(":", 1)[0]
    return _start_server(base, tls_dir, f"{host}:0", access)


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP (terminal closed) end the wait like Ctrl-C, so the server is always stopped."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


def _write_sample(path: Path, size: int) -> None:
    """Half random bytes, half hex text (compressible), in alternating MiB blocks."""
    with open(path, "wb") as f:
        written = 0
        block = 0
        while written < size:
            n = min(MIB, size - written)
            f.write(os.urandom(n) if block % 2 == 0 else os.urandom((n + 1) // 2).hex().encode()[:n])
            written += n
            block += 1


def _file_digest(path: Path) -> bytes:
    hasher = new_hasher()
    with open(path, "rb") as f:
        while piece := f.read(MIB):
            hasher.update(piece)
    return hasher.digest()


def demo(
    ctx: typer.Context,
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", metavar="DIR", help="Where certificates, server data and sample files go.")] = None,
    listen: Annotated[str, typer.Option(
        "--listen", metavar="HOST:PORT", help="Server address (a free port is used if it is taken).")
    ] = "127.0.0.1:7420",
    size_mib: Annotated[int, typer.Option("--size-mib", min=1, max=4096, help="Size of the sample file.")] = 24,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Stop the server and exit when done.")] = False,
) -> None:
    """Run the product: a server with mTLS, delta upload, history, restore, statistics."""
    from service.certs import create_dev_pki

    rt = Runtime.of(ctx)
    out = rt.out
    say = out.note if out.json else out.done
    base = (data_dir or Path(platformdirs.user_data_dir(APP_NAME)) / "demo").expanduser().resolve()
    tls_dir, work = base / "tls", base / "work"
    work.mkdir(parents=True, exist_ok=True)
    if not (tls_dir / "ca.pem").is_file():
        create_dev_pki(tls_dir)
        say(f"[bold]1.[/bold] created development certificates in {tls_dir}")
    else:
        say(f"[bold]1.[/bold] using the certificates in {tls_dir}")
    access = base / "access.toml"
    if not access.is_file():
        # The demo's own client may see server-wide statistics (disk usage); others get their own namespace.
        access.write_text("[identities.client]\nadmin = true\n", encoding="utf-8")
    server = _start_server(base, tls_dir, listen, access)
    address = server.address
    try:
        say(f"[bold]2.[/bold] server running on {address} (mutual TLS, embedded Valkey in {server.data_dir})")
        rt.use(ConnectionSettings(address, tls_dir, False, None))
        summary = _tour(rt, work, size_mib * MIB, say)
        summary.update({"address": address, "tls_dir": str(tls_dir), "data_dir": str(base),
                        "server_log": str(server.log_path)})
        if out.json:
            out.document(summary)
        command = f"STRATUS_SERVER={address} STRATUS_TLS_DIR={tls_dir} stratus ls demo/"
        if no_wait:
            say(f"\nstopping the server (--no-wait). Run [bold]stratus demo --data-dir {base}[/bold] to start again.")
            return
        say(f"\nThe server keeps running on [bold]{address}[/bold]. From another terminal:\n\n  {command}\n"
            f"  STRATUS_SERVER={address} STRATUS_TLS_DIR={tls_dir} stratus put SOME_FILE demo/SOME_FILE\n\n"
            "Press Ctrl-C to stop it.")
        _stop_on_signals()
        try:
            while server.running():
                time.sleep(0.5)
            raise CasError(f"the demo server stopped unexpectedly (log: {server.log_path})")
        except KeyboardInterrupt:
            say("\nstopping the server")
    finally:
        rt.close()
        server.stop()


def _tour(rt: Runtime, work: Path, size: int, say: Any) -> dict[str, Any]:  # noqa: ANN401
    client = rt.client
    sample = work / "sample.bin"
    _write_sample(sample, size)
    first_digest = _file_digest(sample)
    first = client.put_file(sample, REMOTE)
    say(f"[bold]3.[/bold] uploaded a {human_bytes(size)} sample as {REMOTE} version {first.version.version}: "
        f"sent {human_bytes(first.bytes_sent)} (compressed) in {first.chunks_sent} chunks")
    with open(sample, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(4096))
    second_digest = _file_digest(sample)
    second = client.put_file(sample, REMOTE)
    share = 100.0 * second.bytes_sent / max(size, 1)
    say(f"[bold]4.[/bold] changed 4 KiB in the middle and uploaded again as version {second.version.version}: "
        f"sent [bold]{human_bytes(second.bytes_sent)}[/bold] ({second.chunks_sent} of {second.chunks_total} chunks, "
        f"{share:.2f}% of the file)")
    versions = rt.library.log(REMOTE, limit=5)
    if not rt.out.json:
        say("[bold]5.[/bold] history (stratus log demo/sample.bin):")
        rt.out.table(["ver", "size", "chunks", "new bytes"], [
            [v.version, human_bytes(v.size), f"{v.new_chunks} new / {v.chunk_count - v.new_chunks} shared",
             human_bytes(v.new_bytes)] for v in versions], right=["ver", "size", "new bytes"])
    downloader = Downloader(rt.client, rt.cache, GetOptions(rt.settings.server, rt.namespace))
    checks = []
    for info, expected, name in ((first, first_digest, "v1"), (second, second_digest, "v2")):
        target = downloader.locate(REMOTE, version=info.version.version, as_of_ms=None)
        assert not isinstance(target, str)  # a file, not a folder
        dest = work / f"restored-{name}.bin"
        result = downloader.get_file(target, dest).outcomes[0]
        ok = _file_digest(dest) == expected
        checks.append({"version": info.version.version, "file": str(dest), "verified": ok,
                       "bytes_fetched": result.bytes_fetched, "chunks_reused": result.chunks_reused})
        if not ok:
            raise CasError(f"{dest} does not match version {info.version.version}")
    say(f"[bold]6.[/bold] downloaded version {first.version.version} and {second.version.version} to {work} "
        "and checked both against the originals: identical")
    stats = client.info().stats
    ratio = stats.logical_bytes / stats.stored_bytes if stats.stored_bytes else 0.0
    say(f"[bold]7.[/bold] store (stratus info): {human_bytes(stats.logical_bytes)} of file versions kept in "
        f"{human_bytes(stats.stored_bytes)} on disk, {ratio:.2f}x smaller by dedup + compression")
    return {
        "remote": REMOTE, "sample_bytes": size,
        "first_upload": {"version": first.version.version, "bytes_sent": first.bytes_sent,
                         "chunks_sent": first.chunks_sent},
        "second_upload": {"version": second.version.version, "bytes_sent": second.bytes_sent,
                          "chunks_sent": second.chunks_sent, "chunks_total": second.chunks_total},
        "versions": [version_dict(v) for v in versions], "downloads": checks,
        "store": {"logical_bytes": stats.logical_bytes, "stored_bytes": stats.stored_bytes, "ratio": ratio},
    }


def register(app: typer.Typer) -> None:
    """Add the demo command to the app."""
    app.command("demo", epilog=DEMO_EPILOG)(demo)
