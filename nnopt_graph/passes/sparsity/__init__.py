"""Sparsity: N:M and unstructured sparsification, sparse storage."""
