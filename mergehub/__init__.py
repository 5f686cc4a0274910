"""MergeHub: budget-aware merging of LLM checkpoints (engine in ``mergehub.engine``)."""

import os

__version__ = "0.7.0"

# torch's OpenMP threads otherwise spin between parallel regions: on a few cores that takes
# CPU from the merge's reader, writer and compiled-kernel threads (measured here: sce 7.0 s →
# 5.0 s, arcee_fusion 8.0 s → 6.9 s). It must be set before libgomp starts, i.e. before torch
# is imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
