"""tenantsearch: a multi-tenant search service."""

__version__ = "0.1.0"
