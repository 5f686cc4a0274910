"""Presentation helpers every app's pages share: numbers in human units, Plotly chart plumbing,
pagination, form errors, read-only admin displays and the ``mergehub`` template filters.

Imports no domain app (tests/test_architecture.py checks it): apps import ``ui``, never the
other way round.
"""
