"""The demo's synthetic model family (synthetic.generate_family), shared with bench/generate.py.
No Django; torch to write the weights."""
