"""Store kinds the contract suite runs against: name -> fixture name that yields a
factory `() -> PatchStore` (each call a new handle on one shared backing store)."""

STORE_KINDS: dict[str, str] = {
    "memory": "memory_store_factory",
    "sqlite": "sqlite_store_factory",
    "postgresql": "postgres_store_factory",  # tests/support/pg_server.py: a real PostgreSQL
    "supabase": "supabase_store_factory",  # tests/support/supabase_gateway.py: supabase-py + gateway double
}
