"""Ingestion: the write service (validate, version, enqueue) and the indexer (consume, apply)."""
