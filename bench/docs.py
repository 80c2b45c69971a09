"""Writing a benchmark's results into docs/benchmarks.md (``--write``)."""

from __future__ import annotations

from pathlib import Path

DOCS_FILE = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_section(name: str, text: str, heading: str) -> None:
    """Replace what stands between ``<!-- name:start -->`` and ``<!-- name:end -->`` in
    docs/benchmarks.md with ``text``; a section not there yet is appended after ``heading`` (its
    Markdown title, and any lines that go before the results)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    current = DOCS_FILE.read_text()
    if start not in current or end not in current:
        current = current.rstrip("\n") + f"\n\n{heading}\n\n{start}\n{end}\n"
    head, _, rest = current.partition(start)
    _, _, tail = rest.partition(end)
    DOCS_FILE.write_text(f"{head}{start}\n{text}\n{end}{tail}")
