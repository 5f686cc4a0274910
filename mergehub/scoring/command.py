"""``mergehub eval MODEL_DIR --task FILE ...``: the command's arguments and its report.

``mergehub/engine/cli.py`` registers the parser (``add_eval_parser``) and calls ``run_eval``;
errors (TaskError, InvalidCheckpoint, ConfigError) end the command there with exit status 2 and
one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mergehub.engine.api import ConfigError

from .tasks import KINDS, detect_kind, load_task

ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="score a model on task files (exact match, accuracy, perplexity, lm-eval)")
    e.add_argument("model_dir", metavar="MODEL_DIR")
    e.add_argument("--task", action="append", required=True, metavar="FILE",
                   help="a task file: .jsonl (generate or choice), .txt (perplexity), .yaml (lm-eval); "
                        "repeatable")
    e.add_argument("--kind", default="auto", choices=("auto",) + KINDS, help="task kind (default: from the file)")
    e.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="generate tasks: tokens to generate (default 32)")
    e.add_argument("--stop", default=None, metavar="S",
                   help="generate tasks: stop string, with \\n \\t \\\\ escapes (default \\n; '' for EOS only)")
    e.add_argument("--limit", type=int, default=None, metavar="N",
                   help="score only the first N examples of each task")
    e.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="examples per forward pass (default 64)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--samples", type=int, default=10, metavar="N",
                   help="example outputs kept per task in --json (default 10)")
    e.add_argument("--json", action="store_true", help="print the scores as a JSON list")


def unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        pair = text[i:i + 2]
        if pair in ESCAPES:
            out.append(ESCAPES[pair])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _load_tasks(args: argparse.Namespace) -> list:
    generate_settings = {}
    if args.max_new_tokens is not None:
        generate_settings["max_new_tokens"] = args.max_new_tokens
    if args.stop is not None:
        generate_settings["stop"] = unescape(args.stop)
    tasks = []
    for path in args.task:
        kind = detect_kind(path) if args.kind == "auto" else args.kind
        tasks.append(load_task(path, kind=kind, settings=generate_settings if kind == "generate" else None))
    if generate_settings and not any(t.kind == "generate" for t in tasks):
        raise ConfigError("--max-new-tokens and --stop apply to generate tasks only, and no task is one")
    return tasks


class _ExampleBar:
    """A tqdm bar counting examples, on a terminal only."""

    def __init__(self):
        self.bar = None

    def __call__(self, p) -> None:
        if not sys.stderr.isatty():
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=p.total, unit="ex", leave=False, file=sys.stderr)
        self.bar.set_description(p.message or "loading", refresh=False)
        self.bar.n = p.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _number(value: float, metric: str) -> str:
    if metric == "perplexity":
        return f"{value:.2f}"
    return f"{value:.3f}" if 0 <= value <= 1 else f"{value:.4g}"


def score_table(scores) -> str:
    headers = ["task", "metric", "n", "score", "95% CI", "seconds"]
    rows = [[s.task, s.metric + ("" if s.higher_is_better else " (lower is better)"), str(s.n),
             _number(s.score, s.metric), f"[{_number(s.ci_low, s.metric)}, {_number(s.ci_high, s.metric)}]",
             f"{s.seconds:.2f}"] for s in scores]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    left = (True, True, False, False, False, False)

    def line(cells):
        return "  ".join(c.ljust(w) if l else c.rjust(w) for c, w, l in zip(cells, widths, left)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_model

    tasks = _load_tasks(args)
    bar = _ExampleBar()
    started = time.perf_counter()
    try:
        scores = evaluate_model(args.model_dir, tasks, device=args.device, batch_size=args.batch_size,
                                sample_size=args.samples, limit=args.limit, progress=bar)
    finally:
        bar.close()
    if args.json:
        print(json.dumps([s.to_dict() for s in scores]))
        return 0
    print(score_table(scores))
    device = scores[0].device if scores else args.device
    print(f"\n{args.model_dir} scored on {device} in {time.perf_counter() - started:.2f} s "
          "(loading transformers and the model included)")
    return 0
