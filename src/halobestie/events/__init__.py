"""Real-time events to users, across instances (Valkey pub/sub)."""
