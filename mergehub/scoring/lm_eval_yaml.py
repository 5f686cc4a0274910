"""What MergeHub reads from an lm-evaluation-harness task YAML before handing it to lm-eval:
the task name, the local data files (hashed into the task's content hash), the metric.

The YAML is parsed with a safe loader. ``!function`` tags (lm-eval imports and runs the Python
they name) and ``include:`` (other YAML files) are refused: a task file must not run code, and
everything that defines the task must be in the files that are hashed.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import TaskError

INSTALL_HINT = "pip install 'mergehub[lmeval]'"
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")
DEFAULT_METRIC = {"generate_until": "exact_match", "multiple_choice": "acc",
                  "loglikelihood": "acc", "loglikelihood_rolling": "word_perplexity"}
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "word_perplexity", "byte_perplexity")


class _Tagged(str):
    """Stands in for a value carrying a custom tag (only seen to refuse it)."""


class _SafeTaggedLoader(yaml.SafeLoader):
    pass


def _tagged(loader, tag_suffix, node):
    return _Tagged(tag_suffix)


_SafeTaggedLoader.add_multi_constructor("!", _tagged)


def _find_tagged(value, trail=""):
    if isinstance(value, _Tagged):
        return trail or "(top level)"
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_tagged(v, f"{trail}.{k}" if trail else str(k))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _find_tagged(v, f"{trail}[{i}]")
            if found:
                return found
    return None


def parse_yaml(text: str, path: Path) -> dict:
    try:
        config = yaml.load(text, Loader=_SafeTaggedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise TaskError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc}); "
                        "fix the syntax") from None
    if not isinstance(config, dict):
        raise TaskError(f"{path}: an lm-eval task YAML must be a mapping with a 'task' key")
    tagged = _find_tagged(config)
    if tagged:
        raise TaskError(f"{path}: {tagged} uses a YAML tag such as !function, which would run Python "
                        "code; MergeHub runs no code from task files, so write the task without it")
    if "include" in config:
        raise TaskError(f"{path}: 'include' pulls in other YAML files; put the whole task in this one file")
    if not isinstance(config.get("task"), str) or not config["task"]:
        raise TaskError(f"{path}: missing 'task: NAME'; lm-eval needs the task's name")
    return config


def data_files(config: dict, path: Path) -> list[Path]:
    """Absolute paths of the local files named by ``dataset_kwargs.data_files`` (relative ones
    are taken from the YAML's directory); [] for a dataset from the Hub's offline cache."""
    names = (config.get("dataset_kwargs") or {}).get("data_files")
    if config.get("dataset_path") in LOCAL_BUILDERS and not names:
        raise TaskError(f"{path}: dataset_path {config['dataset_path']!r} needs dataset_kwargs.data_files "
                        "naming local files")
    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    elif isinstance(names, dict):
        names = [n for v in names.values() for n in ([v] if isinstance(v, str) else v)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TaskError(f"{path}: dataset_kwargs.data_files must be a file name, a list, or a mapping "
                        "of split names to file names")
    files = []
    for name in names:
        file = Path(name) if Path(name).is_absolute() else path.parent / name
        if not file.is_file():
            raise TaskError(f"{path}: data file {name!r} not found (looked at {file}); "
                            "data_files are taken relative to the YAML's directory")
        files.append(file.resolve())
    return files


def metric_of(config: dict) -> tuple[str, bool]:
    """The metric MergeHub reports (the first of metric_list) and whether higher is better."""
    metrics = config.get("metric_list") or []
    first = metrics[0] if metrics and isinstance(metrics[0], dict) else {}
    name = first.get("metric") or DEFAULT_METRIC.get(config.get("output_type"), "acc")
    higher = first.get("higher_is_better")
    if not isinstance(higher, bool):
        higher = not any(word in str(name) for word in LOWER_IS_BETTER)
    return str(name), higher


def require_lm_eval(path) -> None:
    """TaskError unless lm-evaluation-harness can be imported (it is an optional extra)."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise TaskError(f"{path}: lm_eval tasks need lm-evaluation-harness, which is not installed; "
                        f"run {INSTALL_HINT}")
