"""Rate limits and daily quotas: the RateLimiter port and its adapters."""
