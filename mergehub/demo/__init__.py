"""Synthetic models: the demo's and the benchmark's families, streamed to disk
(synthetic.generate_family; bench/generate.py is its command line), and the tests' tiny families,
built in memory (tiny.tiny_family). No Django; torch to write the weights."""
