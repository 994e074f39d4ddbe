"""Compatibility layers for users coming from other provenance tools (see docs/migration-yprov4ml.md)."""
