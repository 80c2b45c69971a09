"""The ingestion queue: the Queue port and its adapters."""
