"""Data side of segflow: dataset adapters, manifest, validation, shards and the loader."""
