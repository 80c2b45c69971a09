# The two commands a new user needs: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
UV := scripts/uv

.PHONY: run test lint typecheck unit bench-embedded

run:  ## install what the service needs and serve on embedded defaults
	$(UV) sync --frozen --no-dev --inexact
	.venv/bin/tenantsearch serve

test:  ## install everything the tests need and run every check and test
	scripts/test

lint:
	$(UV) sync --frozen
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck:
	$(UV) sync --frozen
	.venv/bin/mypy

bench-embedded:  ## ingest and search benchmark of the embedded default (writes docs/benchmarks.md)
	$(UV) sync --frozen
	.venv/bin/python -m bench.embedded --write
