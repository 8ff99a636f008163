"""Search over pipelines for the fastest model within a guard: space, strategy, executors."""
