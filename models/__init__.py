"""Models for tests and benchmarks: synthetic zoo, real models fetched from wheels, digits CNN."""
