"""The mitra availability engine: Postgres is the truth, Valkey a derivable mirror."""
