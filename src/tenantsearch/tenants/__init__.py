"""Tenants: creation, administration and erasure (platform admin only)."""
