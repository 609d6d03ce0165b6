"""Trained runs: training or loading a cached run (``fit``), the cache's records and its weights."""
