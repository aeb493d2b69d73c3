"""Valkey plumbing: the client, the mirror's breaker and trust, the auto-pipeline, raw
pooled-connection access and every key name. Features use it; it imports no feature."""
