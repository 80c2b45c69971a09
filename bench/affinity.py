"""Processes of a benchmark: CPU affinity (the engine on a core of its own) and CPU time.

In a deployment OpenSearch has machines of its own; on a benchmark machine it shares its cores
with the client and the service's processes. ``--pin-engine`` in the OpenSearch benchmarks puts
every thread of the engine on the last CPU and everything else on the others, so a comparison of
the service with the engine alone measures the service's path rather than how many processes share
the machine's cores. Linux only (``sched_setaffinity`` per thread). Processes are found and
measured with psutil.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Iterator

import psutil


def split_cpus() -> tuple[set[int], set[int]]:
    """(the engine's CPU, everyone else's): the last CPU this process may use, and the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin-engine needs at least 2 CPUs")
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of ``pid`` to ``cpus`` (threads it starts later inherit this)."""
    for thread in psutil.Process(pid).threads():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(thread.id, cpus)


def pids_named(names: Collection[str]) -> Iterable[tuple[int, str]]:
    """(pid, command name) of every process on the machine whose command name is in ``names``."""
    for process in psutil.process_iter(["name"]):
        name = process.info["name"]
        if name in names:
            yield process.pid, name


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextlib.contextmanager
def engine_pinned(
    others: Iterable[int], services: Collection[str] = ()
) -> Iterator[tuple[set[int], set[int]]]:
    """Every ``java`` process (the engine) on its own CPU; this process, ``others`` (pids) and
    the processes named in ``services`` on the remaining CPUs. Yields (engine's, the rest's);
    on leaving, every process it pinned may use every CPU again (services started apart, given
    by URL, outlive the benchmark)."""
    engine, rest = split_cpus()
    everything = engine | rest
    pinned: list[int] = []
    try:
        for pid, comm in pids_named({"java", *services}):
            pin(pid, engine if comm == "java" else rest)
            pinned.append(pid)
        for pid in [*others, os.getpid()]:
            pin(pid, rest)
            pinned.append(pid)
        yield engine, rest
    finally:
        for pid in pinned:
            with contextlib.suppress(psutil.NoSuchProcess):  # it exited meanwhile
                pin(pid, everything)
