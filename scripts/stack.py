"""`make stack`: a production-like local stack without Docker, in the foreground.

Starts a real OpenSearch node, RabbitMQ, PostgreSQL and Redis on free loopback ports (under
``.data/stack/``), then one ``tenantsearch api`` and one ``tenantsearch indexer`` process wired to
them, prints the URLs and the admin key, and stops everything on Ctrl-C (or when either process
exits). Every run starts empty; its data is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from tests.support.opensearch_node import build_node, free_port, start_node
from tests.support.services import postgres, rabbitmq, redis

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a tenantsearch process exited during start-up; see its log above")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url}/readyz did not answer 200 within {timeout:.0f}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    # SIGTERM (a process manager, `kill`) and SIGHUP (the terminal closed) stop the stack as
    # Ctrl-C does, removing what it started; their default action would leave it all running.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    base = ROOT / ".data" / "stack"
    base.mkdir(parents=True, exist_ok=True)
    port = int(os.environ.get("TENANTSEARCH_HTTP_PORT", "8080"))
    with contextlib.ExitStack() as stack:
        run_dir = Path(stack.enter_context(_temp_dir(base)))
        say("[1/6] building the OpenSearch node (first time: about a minute)...")
        build_node()
        say("[2/6] starting OpenSearch...")
        node = stack.enter_context(
            contextlib.closing(
                start_node(
                    run_dir / "opensearch",
                    cluster_name="tenantsearch-stack",
                    http_port=free_port(),
                    fast_start=False,
                )
            )
        )
        say("[3/6] starting RabbitMQ (about 15 s)...")
        broker = stack.enter_context(rabbitmq(run_dir))
        say("[4/6] starting PostgreSQL and Redis...")
        pg = stack.enter_context(postgres(run_dir))
        cache = stack.enter_context(redis(run_dir))
        admin_key = "ts_admin_" + secrets.token_urlsafe(24)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTSEARCH_")}
        env.update(
            TENANTSEARCH_HTTP_PORT=str(port),
            TENANTSEARCH_DATA_DIR=str(run_dir / "data"),
            TENANTSEARCH_ADMIN_KEY=admin_key,
            TENANTSEARCH_SEARCH_BACKEND="opensearch",
            TENANTSEARCH_OPENSEARCH_URL=node.url,
            TENANTSEARCH_OPENSEARCH_REPLICAS="0",
            TENANTSEARCH_QUEUE_BACKEND="rabbitmq",
            TENANTSEARCH_RABBITMQ_URL=broker.url,
            TENANTSEARCH_DATABASE_URL=pg.url,
            TENANTSEARCH_REDIS_URL=cache.url,
            TENANTSEARCH_LIMITER_BACKEND="redis",
            TENANTSEARCH_CACHE_BACKEND="redis",
            TENANTSEARCH_LOG_FORMAT=os.environ.get("TENANTSEARCH_LOG_FORMAT", "console"),
        )
        say("[5/6] starting tenantsearch api and indexer...")
        exe = str(ROOT / ".venv" / "bin" / "tenantsearch")
        procs = [
            subprocess.Popen([exe, "api"], env=env),
            subprocess.Popen([exe, "indexer"], env=env),
        ]
        stack.callback(_stop_all, procs)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, procs)
        say(
            "[6/6] ready.\n\n"
            f"  API           {url}   (OpenAPI: {url}/docs)\n"
            f"  admin key     {admin_key}\n"
            f"  OpenSearch    {node.url}\n"
            f"  RabbitMQ      {broker.url}\n"
            f"  PostgreSQL    {pg.url}\n"
            f"  Redis         {cache.url}\n\n"
            "  Ctrl-C stops everything and removes its data.\n"
        )
        try:
            while all(p.poll() is None for p in procs):
                time.sleep(0.5)
        except KeyboardInterrupt:
            say("\nstopping...")
            return 0
        say("a tenantsearch process exited; stopping the stack")
        return 1


@contextlib.contextmanager
def _temp_dir(base: Path) -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="run-", dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main())
