"""Chat sessions (lifecycle and durable timers arrive with the sessions issue)."""
