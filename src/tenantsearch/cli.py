"""The ``tenantsearch`` command."""

from __future__ import annotations

import sys

import typer
import uvicorn

from tenantsearch.settings import Settings, SettingsError, load_settings

cli = typer.Typer(
    help="tenantsearch: a multi-tenant search service.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        sys.stderr.write(f"tenantsearch: {exc}\n")
        raise typer.Exit(2) from exc


def _serve(settings: Settings, *, run_indexer: bool) -> None:
    from tenantsearch.app import create_app
    from tenantsearch.observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, run_indexer=run_indexer)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    uvicorn.Server(config).run()


@cli.command()
def serve() -> None:
    """Serve the API and run the indexer in one process (the embedded, single-machine setup)."""
    _serve(_settings(), run_indexer=True)


@cli.command()
def api() -> None:
    """Serve the API only; writes are applied by separate `tenantsearch indexer` processes."""
    _serve(_settings(), run_indexer=False)


@cli.command("check-config")
def check_config() -> None:
    """Validate the TENANTSEARCH_* settings and print them (secrets hidden)."""
    settings = _settings()
    for name, value in sorted(settings.model_dump().items()):
        sys.stdout.write(f"TENANTSEARCH_{name.upper()}={value}\n")


def main() -> None:
    cli()
