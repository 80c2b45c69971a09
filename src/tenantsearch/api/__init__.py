"""The HTTP API: thin routes over the services, problem+json errors, request middleware."""
