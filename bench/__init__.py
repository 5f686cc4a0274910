"""Benchmarks of MergeHub against mergekit, and the synthetic model families they run on.

Nothing here runs as a test; ``tests/bench`` only checks the family generator.
"""
