"""``stratus``: the StratusVault command line. Global options, then the commands of cli/commands/."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cli.commands import admin, browse, demo, retention, sync, transfer
from cli.errors import report
from cli.output import Output
from cli.runtime import Runtime

EPILOG = """[bold]Examples[/bold]

  stratus demo                             [dim]# see it work end to end[/dim]
  stratus put big.db backups/big.db        [dim]# only new chunks travel[/dim]
  stratus put ~/photos backups/photos      [dim]# a folder, incrementally[/dim]
  stratus log backups/big.db
  stratus get --version 3 backups/big.db big.db
  stratus get --as-of 2h backups/photos restored
  stratus --json ls --all backups/

[bold]Connection[/bold]: --server or STRATUS_SERVER (default 127.0.0.1:7420);
--tls-dir or STRATUS_TLS_DIR, or --insecure or STRATUS_INSECURE=1;
STRATUS_CLIENT_NAME picks client-NAME.pem; --namespace or STRATUS_NAMESPACE
works in a namespace you hold a grant on; or config.toml in your config dir.
[bold]Exit codes[/bold]: 0 ok, 1 error, 2 usage, 3 not found, 4 conflict, 5 integrity.
"""



class StratusGroup(TyperGroup):
    """The root command group: runs a command and turns any failure into its exit code (cli/errors.py)."""

    def invoke(self, ctx: typer.Context) -> Any:  # noqa: ANN401 - whatever the command returns
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the single place that reports failures
            if type(exc).__module__.startswith(("click", "typer")):
                raise  # usage errors: typer prints them and exits 2
            raise typer.Exit(report(exc, ctx)) from None


app = typer.Typer(
    cls=StratusGroup,
    name="stratus",
    help="StratusVault: a content-addressed, deduplicating file store. Every version of every file, "
         "moving only the chunks the other side lacks.",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main(
    ctx: typer.Context,
    server: Annotated[str | None, typer.Option(
        "--server", metavar="HOST:PORT", help="Server address (env STRATUS_SERVER; default 127.0.0.1:7420).")] = None,
    tls_dir: Annotated[str | None, typer.Option(
        "--tls-dir", metavar="DIR", help="mTLS files: ca.pem, client.pem, client-key.pem (env STRATUS_TLS_DIR).")
    ] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Plaintext connection (env STRATUS_INSECURE=1).")] = False,
    client_name: Annotated[str | None, typer.Option(
        "--client-name", metavar="NAME", help="Use client-NAME.pem (env STRATUS_CLIENT_NAME).")] = None,
    namespace: Annotated[str | None, typer.Option(
        "--namespace", metavar="NS",
        help="Work in namespace NS, one you hold a grant on (env STRATUS_NAMESPACE; default: your own).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (JSON lines for watch).")
                           ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes, no progress bars.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
) -> None:
    """Global options go before the command: stratus --json ls."""
    if insecure and tls_dir:
        raise typer.BadParameter("give either --tls-dir or --insecure, not both", param_hint="--insecure")
    rt = Runtime(Output(json_mode=json_output, quiet=quiet), server=server, tls_dir=tls_dir, insecure=insecure,
                 client_name=client_name, namespace_option=namespace, debug=debug)
    ctx.obj = rt
    ctx.call_on_close(rt.close)


transfer.register(app)
browse.register(app)
retention.register(app)
admin.register(app)
demo.register(app)
sync.register(app)

if __name__ == "__main__":
    app()
