"""MergeHub: budget-aware merging of LLM checkpoints (engine in ``mergehub.engine``)."""

__version__ = "0.2.0"
