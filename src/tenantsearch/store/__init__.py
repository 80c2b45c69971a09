"""Metadata: tenants, API keys, collections, tasks and counters in SQL (SQLite or PostgreSQL)."""
