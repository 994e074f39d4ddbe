"""Integrations with training frameworks (PyTorch distributed, Lightning); each imports its framework lazily."""
