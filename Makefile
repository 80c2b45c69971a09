# The two commands a new user needs: `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
UV := scripts/uv

.PHONY: run test lint typecheck bench-embedded opensearch stack

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

OPENSEARCH_PORT ?= 9200
opensearch:  ## a local single OpenSearch node in the foreground (data in .data/opensearch)
	mkdir -p .data/opensearch
	OPENSEARCH_HTTP_PORT=$(OPENSEARCH_PORT) OPENSEARCH_HOME=$(CURDIR)/.data/opensearch \
	  tools/opensearch-node/run.sh -Ediscovery.type=single-node -Ecluster.name=tenantsearch-dev \
	  -Epath.repo=$(CURDIR)/.data/opensearch/snapshots

stack:  ## OpenSearch, RabbitMQ, PostgreSQL, Redis + one api and one indexer process; Ctrl-C stops all
	$(UV) sync --frozen
	scripts/install-services
	.venv/bin/python -m scripts.stack
