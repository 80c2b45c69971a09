"""CPU affinity for benchmarks: the engine on a core of its own, as when it runs apart.

In a deployment OpenSearch has machines of its own; on a benchmark machine it shares its cores
with the client and the service's processes. ``--pin-engine`` in the OpenSearch benchmarks puts
every thread of the engine on the last CPU and everything else on the others, so a comparison of
the service with the engine alone measures the service's path rather than how many processes share
the machine's cores. Linux only (``sched_setaffinity`` per thread, read from ``/proc``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path


def split_cpus() -> tuple[set[int], set[int]]:
    """(the engine's CPU, everyone else's): the last CPU this process may use, and the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin-engine needs at least 2 CPUs")
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> None:
    """Restrict every thread of ``pid`` to ``cpus`` (threads it starts later inherit this)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(int(task.name), cpus)


def pids_named(names: Collection[str]) -> Iterable[tuple[int, str]]:
    """(pid, command name) of every process on the machine whose command name is in ``names``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited meanwhile
        comm = text[text.index("(") + 1 : text.rindex(")")]
        if comm in names:
            yield int(stat.parent.name), comm


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
            with contextlib.suppress(FileNotFoundError):  # it exited meanwhile
                pin(pid, everything)
