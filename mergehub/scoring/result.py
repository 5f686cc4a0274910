"""TaskScore: one task's score on one model, with its interval and a few readable samples."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TaskScore:
    task: str
    kind: str
    metric: str
    content_hash: str
    settings: dict
    n: int                     # examples (documents for perplexity) scored
    score: float
    ci_low: float              # 95% interval (Wilson for proportions; see stats.py)
    ci_high: float
    higher_is_better: bool
    samples: list[dict] = field(default_factory=list)  # the first sample_size examples, readable
    seconds: float = 0.0       # this task's scoring time (the model's loading not included)
    device: str = "cpu"

    def to_dict(self) -> dict:
        """A JSON-serialisable dict of every field."""
        return asdict(self)
