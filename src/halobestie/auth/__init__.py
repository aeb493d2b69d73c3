"""Users, roles, auth sessions and tokens."""
