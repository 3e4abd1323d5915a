"""Parquet / Arrow writers, the manifest, and the reader behind raysight.open."""
