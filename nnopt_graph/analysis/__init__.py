"""Read-only analyses of a model: traversal, statistics, shapes."""
