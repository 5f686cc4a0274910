"""The model card: YAML front matter that parses whatever the names, and every field the issue
asks for: the mergekit config, method, budget (as typed and in bytes), I/O saved, deviation,
evaluation results, input checkpoints with their hashes, MergeHub's version."""

from __future__ import annotations

import pytest
import yaml

import mergehub
from mergehub.evaluation.models import EvalResult, EvaluationJob
from mergehub.publishing.model_card import card_inputs, cell, fenced, model_card, render
from mergehub.runs.yaml_config import config_yaml
from mergehub.ui.formatting import human_bytes

pytestmark = pytest.mark.django_db


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_the_card_says_everything_the_issue_asks_for(merged_run):
    card = model_card(merged_run)
    meta = _front_matter(card)
    assert meta["library_name"] == "transformers" and meta["tags"] == ["mergehub", "merge"]
    assert "base_model" not in meta  # local checkpoints only: no Hub ids to name
    metrics = merged_run.metrics
    # the mergekit YAML, with checkpoint names where the server has directories
    refs = {path: name for path, name in zip(
        [merged_run.config["base_model"], *(m["model"] for m in merged_run.config["models"])],
        ["base", "expert-1", "expert-2"])}
    assert config_yaml(merged_run, model_refs=refs).strip() in card
    for path in refs:
        assert path not in card
    assert "**Method:** `ties`" in card
    assert f"`{merged_run.budget}` as typed, {human_bytes(metrics['budget_bytes'])} ({metrics['budget_bytes']:,} bytes)" in card
    assert f"**I/O saved:** {human_bytes(merged_run.bytes_saved)}" in card
    assert f"read from storage {human_bytes(metrics['expert_bytes_read'])}" in card
    deviation = metrics["deviation"]
    assert f"{deviation['update_relative']:.3g} relative to the merged update" in card
    assert "## Evaluation" in card and "Not evaluated in MergeHub." in card
    assert f"MergeHub {mergehub.__version__}" in card
    # inputs: the base and both experts, each weight file with the sha256 the merge read
    for entry in [merged_run.manifest["inputs"]["base"], *merged_run.manifest["inputs"]["models"]]:
        for name, digest in entry["files"].items():
            assert f"| {name} | `{digest}` |" in card
    for name in ("| base | base |", "| expert | expert-1 |", "| expert | expert-2 |"):
        assert name in card


def test_an_unmeasured_deviation_says_so(merged_run):
    merged_run.metrics = {**merged_run.metrics, "deviation": None}
    assert "**Deviation from the full-read merge:** not measured" in model_card(merged_run)


def test_evaluation_results_are_tabled(merged_run):
    digest = "merge-digest"
    EvaluationJob.objects.create(team=merged_run.team, run=merged_run, status="succeeded",
                                 subjects=[{"label": f"merge (run #{merged_run.pk})", "role": "merge",
                                            "model_hash": digest}])
    EvalResult.objects.create(team=merged_run.team, model_hash=digest, task_name="rev|erse", task_hash="t",
                              settings_key="s", metric="exact_match", n=20, score=0.75, ci_low=0.55, ci_high=0.9)
    card = model_card(merged_run)
    assert f"| merge (run #{merged_run.pk}) | merge | rev\\|erse | exact_match | 0.750 | 0.550–0.900 | 20 |" in card


def test_hub_inputs_become_base_model_and_names_cannot_break_the_yaml(merged_run):
    base = merged_run.base
    base.source, base.hf_repo_id, base.hf_revision = "hf", "org/base-model", "main"
    base.save()
    merged_run.name = "---\nlibrary_name: evil\n# ``` | pipes: [x]"
    card = model_card(merged_run)
    meta = _front_matter(card)
    assert meta == {"library_name": "transformers", "tags": ["mergehub", "merge"], "base_model": ["org/base-model"]}
    assert "`org/base-model@main` (Hugging Face)" in card


def test_render_is_a_function_of_its_inputs(merged_run):
    inputs = card_inputs(merged_run)
    assert render(inputs) == render(inputs)
    inputs.version = "9.9.9"
    assert "MergeHub 9.9.9" in render(inputs)


def test_markdown_helpers():
    assert cell("a|b\nc") == "a\\|b c"
    assert fenced("x ```` y", "yaml").startswith("`````yaml\n") and fenced("x ```` y").endswith("\n`````")
