"""Runs mergekit's own merge methods on the parity test's inputs (executed by the interpreter
that has mergekit installed, never imported by the test suite).

    python mergekit_driver.py CASES.json INPUTS.safetensors OUTPUTS.safetensors REPORT.json

CASES.json is a list of {"id", "method", "tensors": [input names], "base_index": int|null,
"parameters": {...}}; every case is merged with ``mergekit.merge_methods.merge_tensors`` in
float32 and stored under its id. REPORT.json gets {"errors": {id: message}, "specs": {method:
{"base": policy, "parameters": {name: {"scope", "default"}}}}, "version": ...}.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import torch
from safetensors.torch import load_file, save_file


def _default(value):
    from mergekit.merge_methods.base import MISSING

    if value is MISSING:
        return "REQUIRED"
    return value


def specs() -> dict:
    from mergekit.merge_methods import registered_methods

    out = {}
    for method in registered_methods():
        spec = method.spec
        out[spec.name] = {
            "base": spec.contract.base.value,
            "parameters": {p.name: {"scope": p.scope.value, "default": _default(p.default)}
                           for p in spec.parameters},
        }
    return out


def main(cases_path: str, inputs_path: str, outputs_path: str, report_path: str) -> None:
    from mergekit.merge_methods import merge_tensors

    cases = json.load(open(cases_path))
    tensors = load_file(inputs_path)
    outputs, errors = {}, {}
    for case in cases:
        try:
            result = merge_tensors(
                [tensors[name] for name in case["tensors"]], case["method"],
                parameters=case["parameters"], base_index=case["base_index"],
                dtype=torch.float32)
            outputs[case["id"]] = result.detach().to(torch.float32).contiguous()
        except Exception as exc:  # reported per case by the test
            errors[case["id"]] = f"{type(exc).__name__}: {exc}"
    save_file(outputs, outputs_path)
    report = {"errors": errors, "specs": specs(), "version": version("mergekit")}
    json.dump(report, open(report_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
