"""The result cache: the Cache port, its adapters, and cache-key derivation."""
