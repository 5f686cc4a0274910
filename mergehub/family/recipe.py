"""The training recipe of the demo family: every number that decides the models' bytes.

A family directory records the recipe it was built with (``family.json``), and a family is only
reused when both its seed and its recipe match. ``scaled`` shortens every phase for tests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .tasks import TASK_NAMES

# LlamaForCausalLM shape: ~0.54M parameters with the 34-token character vocabulary.
MODEL_SHAPE = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 4, "intermediate_size": 512}


def _default_expert_steps() -> dict[str, int]:
    return {"reverse": 200, "sort": 300, "caesar": 200, "swap": 200}


@dataclass(frozen=True)
class Recipe:
    base_steps: int = 200
    base_lr: float = 2e-3
    expert_steps: dict[str, int] = field(default_factory=_default_expert_steps)
    expert_lr: float = 1e-3
    # Share of every expert batch drawn from the base's even task mixture: without it an
    # expert forgets the other tasks and every merge of the experts lands below the base.
    replay_fraction: float = 0.25
    batch_size: int = 64
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        if set(self.expert_steps) != set(TASK_NAMES):
            raise ValueError(f"expert_steps must name exactly the tasks {', '.join(TASK_NAMES)}")
        if not 0 <= self.replay_fraction < 1:
            raise ValueError("replay_fraction must be in [0, 1)")
        if self.base_steps < 1 or min(self.expert_steps.values()) < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")

    def scaled(self, factor: float) -> "Recipe":
        """The same recipe with every phase's steps multiplied by ``factor`` (at least 1 step)."""
        steps = {k: max(1, math.ceil(v * factor)) for k, v in self.expert_steps.items()}
        return replace(self, base_steps=max(1, math.ceil(self.base_steps * factor)), expert_steps=steps,
                       warmup_steps=min(self.warmup_steps, max(1, math.ceil(self.warmup_steps * factor))))

    @property
    def total_steps(self) -> int:
        return self.base_steps + sum(self.expert_steps.values())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expert_steps"] = {name: self.expert_steps[name] for name in TASK_NAMES}
        d["model"] = dict(MODEL_SHAPE)
        return d


DEFAULT_RECIPE = Recipe()
