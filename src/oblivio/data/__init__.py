"""Data: sources, schema checks, validation and shard placement."""
