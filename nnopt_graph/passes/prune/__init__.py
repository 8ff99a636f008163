"""Structured pruning: channel groups scored, removed and refit from the original model."""
