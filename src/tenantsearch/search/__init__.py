"""Search: the collection schema, the query model, the SearchBackend port and its adapters."""
