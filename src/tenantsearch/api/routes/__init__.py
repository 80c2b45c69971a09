"""Route modules, one per resource. Each route authorizes one action and calls one service."""
