"""Start a real ``tenantsearch serve`` process on a free loopback port, for tests over a socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def process_env(port: int, data_dir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``tenantsearch`` child process: this one's, without its own
    ``TENANTSEARCH_*`` settings, plus the port, the data dir, log level warning and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTSEARCH_")}
    env.update(
        TENANTSEARCH_HTTP_PORT=str(port),
        TENANTSEARCH_DATA_DIR=str(data_dir),
        TENANTSEARCH_LOG_LEVEL="warning",
    )
    env.update(extra)
    return env


class ServerProcess:
    def __init__(
        self, data_dir: Path, env: Mapping[str, str] | None = None, command: str = "serve"
    ) -> None:
        self.command = command
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.stdout_path = data_dir.parent / f"server-{self.port}.out"

    def start(self, timeout: float = 60.0) -> None:
        env = process_env(self.port, self.data_dir, self.extra_env)
        with self.stdout_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tenantsearch", self.command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.output()}")

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> bool:
        """SIGTERM; True when the process shut down by itself in time (uvicorn then re-raises the
        signal, so its exit status is -SIGTERM by design), False when it had to be killed."""
        if self.process is None or self.process.poll() is not None:
            return False
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return False
        return self.process.returncode in (0, -signal.SIGTERM)
