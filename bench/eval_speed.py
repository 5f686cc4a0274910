"""Time ``evaluate_model`` on a tiny model, next to transformers' ``model.generate``.

    python -m bench.eval_speed [--model DIR] [--runs 5] [--examples 200] [--markdown]

Without ``--model`` a tiny random LlamaForCausalLM is written to a temporary directory (hidden
128, 2 layers, 4 heads, intermediate 512, a character vocabulary of 38 tokens: about 0.53M
parameters). Four synthetic generate tasks (reverse, sort, shift, swap of 4–7 letter words;
prompts of 10–16 characters, targets of at most 8) get ``--examples`` each, max_new_tokens 10,
stop "\\n". A random model rarely emits EOS or "\\n", so nearly every row runs all 10 steps:
the slow case.

Each timed run is one whole ``evaluate_model`` call (model loading included, Python imports
not: one untimed warm-up run comes first). ``model.generate`` then decodes the same prompts in
the same batches (left padding, greedy, max_new_tokens 10, outputs cut at the stop string
afterwards), interleaved run by run. The target is 5 s for the four tasks.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported, as in the CLI

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

from .table import format_table

TARGET_SECONDS = 5.0
MAX_NEW_TOKENS = 10
TRANSFORMS = {
    "reverse": lambda w: w[::-1],
    "sort": lambda w: "".join(sorted(w)),
    "shift": lambda w: "".join(chr((ord(c) - 97 + 3) % 26 + 97) for c in w),
    "swap": lambda w: "".join(w[i:i + 2][::-1] for i in range(0, len(w), 2)),
}


def write_tasks(directory: Path, examples: int, seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for name, transform in TRANSFORMS.items():
        lines = []
        for _ in range(examples):
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 7)))
            lines.append(json.dumps({"prompt": f"{name}:{word}=", "target": transform(word)}))
        path = directory / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def time_generate(model_dir: Path, tasks, batch_size: int) -> float:
    """Seconds for model.generate over every task's prompts in batches, outputs decoded and cut."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergehub.scoring.greedy import cut_at_stop

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True, dtype=torch.float32).eval()
    with torch.inference_mode():
        for task in tasks:
            prompts = [e["prompt"] for e in task.examples]
            for start in range(0, len(prompts), batch_size):
                batch = tokenizer(prompts[start:start + batch_size], return_tensors="pt", padding=True)
                out = model.generate(**batch, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                     pad_token_id=tokenizer.pad_token_id)
                texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
                [cut_at_stop(t, "\n") for t in texts]
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eval_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a model directory (default: a tiny random Llama)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--examples", type=int, default=200, help="examples per task (default 200)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)

    import torch
    from transformers.utils import logging as hf_logging

    from mergehub.scoring import evaluate_model, load_task
    from mergehub.scoring.tiny_model import write_tiny_model

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(prefix="mergehub-eval-bench-") as tmp:
        model_dir = args.model or write_tiny_model(Path(tmp) / "model", hidden=128, layers=2, heads=4,
                                                   intermediate=512, seed=0)
        tasks = [load_task(p, settings={"max_new_tokens": MAX_NEW_TOKENS, "stop": "\n"})
                 for p in write_tasks(Path(tmp), args.examples)]
        total = sum(len(t.examples) for t in tasks)
        evaluate_model(model_dir, tasks, batch_size=args.batch_size)  # warm-up: imports, first calls
        ours, scoring_only, theirs = [], [], []
        for _ in range(args.runs):
            started = time.perf_counter()
            scores = evaluate_model(model_dir, tasks, batch_size=args.batch_size)
            ours.append(time.perf_counter() - started)
            scoring_only.append(sum(s.seconds for s in scores))
            theirs.append(time_generate(model_dir, tasks, args.batch_size))

            params = sum(t.numel() for t in _load(model_dir).parameters())
    rows = []
    for label, times in (("evaluate_model (whole call)", ours), ("  of which scoring", scoring_only),
                         ("model.generate, same batches", theirs)):
        median = statistics.median(times)
        rows.append([label, f"{median:.3f}", f"{min(times):.3f}", f"{total / median:.0f}",
                     f"{median / TARGET_SECONDS:.0%}", f"{median / statistics.median(ours):.2f}x"])
    print(f"{len(tasks)} tasks x {args.examples} examples, max_new_tokens {MAX_NEW_TOKENS}, batch size "
          f"{args.batch_size}, {args.runs} runs, {params / 1e6:.2f}M parameters, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(format_table(["", "median s", "min s", "examples/s", "of 5 s target", "vs evaluate_model"], rows,
                       markdown=args.markdown))
    return 0 if statistics.median(ours) <= TARGET_SECONDS else 1


def _load(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)


if __name__ == "__main__":
    sys.exit(main())
