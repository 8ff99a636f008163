"""The base layer: IR helpers used everywhere, and load/save.

Imports nothing of the project but its error types.
"""
