"""Parameter sharing: weight dedup, common subexpressions, weight clustering."""
