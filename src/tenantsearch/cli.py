"""The ``tenantsearch`` command."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Annotated, Any

import typer
import uvicorn
from uvicorn.config import STARTUP_FAILURE

from tenantsearch.errors import Misconfigured, TenantSearchError
from tenantsearch.ingest.dead_letters import DeadLetterSummary
from tenantsearch.settings import Settings, SettingsError, load_settings
from tenantsearch.worker import dead_letters

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


GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the request path of a long-running process.

    Everything imported and built so far (modules, routes, pydantic schemas: ~180k objects) lives
    as long as the process; ``gc.freeze`` moves it out of the collector's generations, so a full
    collection no longer walks it (measured: ~90 ms pauses during a search benchmark before, a
    few ms after). A request allocates a few thousand short-lived objects that reference counting
    frees; with the default gen-0 threshold (700) that still started a collection every few
    requests. docs/benchmarks.md has the figures.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _serve(settings: Settings, *, run_indexer: bool) -> None:
    from tenantsearch.app import create_app
    from tenantsearch.observability.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    server: uvicorn.Server | None = None  # set below; its signal flag stops start-up waits
    app = create_app(
        settings,
        run_indexer=run_indexer,
        stop_requested=lambda: server is not None and server.should_exit,
    )
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)
    tune_gc()
    try:
        server.run()
    except SystemExit as exc:
        # uvicorn exits with STARTUP_FAILURE when start-up raised (and logs why). Told to stop
        # while it waited for a dependency, the process exits 0, as after serving.
        if exc.code == STARTUP_FAILURE and server.should_exit:
            return
        raise


@cli.command()
def serve() -> None:
    """Serve the API and run the indexer in one process (the embedded, single-machine setup)."""
    _serve(_settings(), run_indexer=True)


@cli.command()
def api() -> None:
    """Serve the API only; writes are applied by separate `tenantsearch indexer` processes."""
    _serve(_settings(), run_indexer=False)


@cli.command()
def indexer() -> None:
    """Run an indexer: apply queued writes to the search engine until SIGTERM (several may run)."""
    from tenantsearch.observability.logging import configure_logging
    from tenantsearch.worker import run_indexer

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    tune_gc()
    try:
        asyncio.run(run_indexer(settings))
    except Misconfigured as exc:  # logged as indexer_misconfigured: waiting would not help
        sys.stderr.write(f"tenantsearch: {exc.detail}\n")
        raise typer.Exit(2) from exc


@cli.command()
def migrate() -> None:
    """Bring the metadata database to the newest schema (the API and indexer also do this)."""
    from tenantsearch.worker import run_migrations

    asyncio.run(run_migrations(_settings()))
    sys.stdout.write("metadata database is up to date\n")


dead = typer.Typer(help="Writes the indexer gave up on: list, show, replay, purge.")
cli.add_typer(dead, name="dead-letters")


def _print_letter(letter: DeadLetterSummary, *, ids: bool = False) -> None:
    sys.stdout.write(
        f"{letter.id}\ttenant={letter.tenant}\tcollection={letter.collection or '-'}\t"
        f"task={letter.task_id or '-'}\tattempts={letter.attempts}\t"
        f"at={letter.dead_at.isoformat()}\treason={letter.reason}\n"
    )
    if ids:
        sys.stdout.write("documents: " + " ".join(letter.document_ids) + "\n")


@dead.command("list")
def dead_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
) -> None:
    """List dead letters, oldest first."""

    async def go() -> None:
        async with dead_letters(_settings()) as service:
            letters = await service.list(tenant=tenant, limit=limit)
        for letter in letters:
            _print_letter(letter)
        sys.stderr.write(f"{len(letters)} dead letter(s)\n")

    asyncio.run(go())


@dead.command("show")
def dead_show(letter_id: str) -> None:
    """One dead letter with all its document ids."""

    async def go() -> None:
        async with dead_letters(_settings()) as service:
            _print_letter(await service.get(letter_id), ids=True)

    _run_or_exit(go())


@dead.command("replay")
def dead_replay(letter_ids: list[str]) -> None:
    """Queue these writes again; their tasks are reopened."""

    async def go() -> None:
        async with dead_letters(_settings()) as service:
            for n, letter_id in enumerate(letter_ids, 1):
                letter = await service.replay(letter_id)
                sys.stderr.write(f"[{n}/{len(letter_ids)}] replayed {letter.id}\n")

    _run_or_exit(go())


@dead.command("purge")
def dead_purge(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop dead letters for good."""
    if not yes:
        typer.confirm(f"Purge the dead letters of {tenant or 'every tenant'}?", abort=True)

    async def go() -> None:
        async with dead_letters(_settings()) as service:
            sys.stdout.write(f"purged {await service.purge(tenant)}\n")

    asyncio.run(go())


def _run_or_exit(work: Coroutine[Any, Any, None]) -> None:
    try:
        asyncio.run(work)
    except TenantSearchError as exc:
        sys.stderr.write(f"tenantsearch: {exc.detail}\n")
        raise typer.Exit(1) from exc


@cli.command("check-config")
def check_config() -> None:
    """Validate the TENANTSEARCH_* settings and print them (secrets hidden)."""
    settings = _settings()
    for name, value in sorted(settings.model_dump().items()):
        sys.stdout.write(f"TENANTSEARCH_{name.upper()}={value}\n")


def main() -> None:
    cli()
