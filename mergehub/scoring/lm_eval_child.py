"""Runs one lm-evaluation-harness task in a child process (started by lm_eval_runner).

    python -m mergehub.scoring.lm_eval_child SPEC.json RESULT.json

SPEC names the task YAML, the model directory and the options; RESULT gets the score, the
per-example metric values and the first samples, or ``{"error": "..."}``. The YAML is copied
into a private directory with its data_files made absolute (lm-eval would take them relative to
the working directory) and that directory is lm-eval's only include path, so only this task is
indexed and a built-in task of the same name cannot shadow it. The parent sets
HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 before this process imports any Hugging Face library.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from pathlib import Path

import yaml

from .lm_eval_yaml import data_files, parse_yaml


def _absolute(names, base: Path):
    """``data_files`` (a name, a list, or split -> name(s)) with every name made absolute."""
    if isinstance(names, dict):
        return {split: _absolute(value, base) for split, value in names.items()}
    if isinstance(names, list):
        return [str(base / name) for name in names]
    return str(base / names)


def _absolute_yaml(yaml_path: Path, into: Path) -> None:
    config = parse_yaml(yaml_path.read_text(encoding="utf-8"), yaml_path)
    data_files(config, yaml_path)  # the same checks as load_task made
    kwargs = config.get("dataset_kwargs") or {}
    if kwargs.get("data_files") is not None:
        kwargs["data_files"] = _absolute(kwargs["data_files"], yaml_path.parent.resolve())
    (into / yaml_path.name).write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def _number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _sample(record: dict, metric: str) -> dict:
    arguments = record.get("arguments") or [[""]]
    prompt = arguments[0][0] if arguments and arguments[0] else ""
    output = record.get("filtered_resps")
    output = output[0] if isinstance(output, list) and len(output) == 1 else output
    value = _number(record.get(metric))
    sample = {"prompt": str(prompt), "output": output if isinstance(output, str) else repr(output)[:200],
              "target": str(record.get("target")), metric: value}
    if value in (0.0, 1.0):
        sample["correct"] = value == 1.0
    return sample


def run(spec: dict) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    metric, task_name = spec["metric"], spec["lm_eval_task"]
    with tempfile.TemporaryDirectory(prefix="mergehub-lmeval-") as tmp:
        _absolute_yaml(Path(spec["yaml"]), Path(tmp))
        manager = TaskManager(include_path=tmp, include_defaults=False)
        model_args = {"pretrained": spec["model_dir"], "add_bos_token": True,
                      "dtype": "float32" if spec["device"] == "cpu" else "auto"}
        results = lm_eval.simple_evaluate(
            model="hf", model_args=model_args, tasks=[task_name], task_manager=manager,
            device=spec["device"], batch_size=spec["batch_size"], num_fewshot=spec["num_fewshot"],
            limit=spec["limit"], bootstrap_iters=0, log_samples=True)
    found = results["results"][task_name]
    key = next((k for k in found if k.split(",")[0] == metric), None)
    if key is None:
        metrics = sorted({k.split(",")[0] for k in found if "," in k and "_stderr" not in k})
        return {"error": f"lm-eval reported no {metric!r} for {task_name} (it reported {', '.join(metrics)})"}
    records = results["samples"][task_name]
    return {"score": _number(found[key]), "stderr": _number(found.get(key.replace(",", "_stderr,", 1))),
            "values": [_number(r.get(metric)) for r in records],
            "samples": [_sample(r, metric) for r in records[:spec["sample_size"]]]}


def main(spec_path: str, result_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    try:
        result = run(spec)
    except Exception as exc:  # reported to the parent as one line; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
