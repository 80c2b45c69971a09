"""Identity and access: API keys, principals and the role-based access matrix."""
