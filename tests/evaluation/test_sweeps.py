"""Sweeps: the budgets a sweep takes, queueing one (inputs checked as a merge's are), the
runner (one pass for every budget's deviation; with tasks, each budget merged, scored and
deleted), cancel and retry."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import Http404

from mergehub.evaluation import sweeps
from mergehub.evaluation.models import EvalResult, SweepJob
from mergehub.evaluation.task_registry import register_task
from mergehub.registry.roots import sweep_output_dir
from mergehub.scoring import model_fingerprint

pytestmark = pytest.mark.django_db
Status = SweepJob.Status


# --- budgets ----------------------------------------------------------------------------------

def test_the_full_budget_is_added_when_missing():
    assert sweeps.parse_budgets("0.1, 0.25") == ["0.1", "0.25", "1"]
    assert sweeps.parse_budgets(" 0.1 ; 512MB ;") == ["0.1", "512MB", "1"]
    assert sweeps.parse_budgets("0.5, 1.0") == ["0.5", "1.0"]  # 1.0 is the full budget already
    assert sweeps.parse_budgets("1") == ["1"]


def test_repeated_budgets_are_listed_once():
    assert sweeps.parse_budgets("0.5, 0.25, 0.5, 1, 0.25") == ["0.5", "0.25", "1"]


@pytest.mark.parametrize(("text", "message"), [
    ("", "List the budgets to sweep, e.g. 0.05, 0.1, 0.25, 0.5, 1."),
    (" , ; ", "List the budgets to sweep"),
    ("0.5, lots", "lots: budget 'lots' is neither a fraction in (0, 1] nor a size"),
    ("0", "0: budget '0' must be a fraction in (0, 1]"),
    ("1.5", "1.5: budget '1.5' must be a fraction in (0, 1]"),
    ("-0.1", "-0.1:"),
])
def test_bad_budgets_are_refused(text, message):
    with pytest.raises(ValidationError) as excinfo:
        sweeps.parse_budgets(text)
    assert message in " ".join(excinfo.value.message_dict["sweep_budgets"])


def test_at_most_twelve_budgets_with_the_full_one():
    eleven = ", ".join(f"0.{i:02d}" for i in range(1, 12))
    assert len(sweeps.parse_budgets(eleven)) == 12
    with pytest.raises(ValidationError, match="At most 12 budgets a sweep"):
        sweeps.parse_budgets(eleven + ", 0.9")  # 13 with the full budget
    with pytest.raises(ValidationError, match="At most 12 budgets"):
        sweeps.parse_budgets(", ".join(f"0.{i:02d}" for i in range(1, 13)) + ", 1")


# --- queueing -----------------------------------------------------------------------------------

def _inputs(registered_lm) -> dict:
    return {"method": "task_arithmetic", "base": registered_lm["base"],
            "experts": [(e, {"weight": 0.5}) for e in registered_lm["experts"]]}


def test_create_sweep_queues_one_job(registered_lm, reverse_task, carol, acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as wakeups:
        sweep = sweeps.create_sweep(user=carol, team=acme, budgets="0.5, 0.25", tasks=[reverse_task], seed=4,
                                    form_data={"method": "task_arithmetic"}, **_inputs(registered_lm))
    assert len(wakeups) == 1 and sweep.status == Status.QUEUED and sweep.queue == "cpu"
    assert sweep.name == "task_arithmetic: 2 experts over 3 budgets" and sweep.budgets == ["0.5", "0.25", "1"]
    assert sweep.base == registered_lm["base"] and set(sweep.experts.all()) == set(registered_lm["experts"])
    assert list(sweep.tasks.all()) == [reverse_task] and sweep.seed == 4 and sweep.block_size == 256
    assert sweep.config["merge_method"] == "task_arithmetic" and sweep.form_data == {"method": "task_arithmetic"}
    assert sweep.log[0]["msg"] == "queued by carol on the cpu queue: budgets 0.5, 0.25, 1"


def test_bad_budgets_queue_nothing(registered_lm, alice, acme):
    with pytest.raises(ValidationError, match="lots"):
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5, lots", **_inputs(registered_lm))
    assert not SweepJob.objects.exists()


def test_a_viewer_may_not_sweep(registered_lm, bob, acme):
    with pytest.raises(PermissionDenied, match="to start sweeps"):
        sweeps.create_sweep(user=bob, team=acme, budgets="0.5", **_inputs(registered_lm))
    assert not SweepJob.objects.exists()


def test_another_teams_checkpoint_or_task_is_not_found(registered_lm, task_file, alice, acme, rival, mallory):
    with pytest.raises(Http404):  # acme's checkpoints in mallory's team
        sweeps.create_sweep(user=mallory, team=rival, budgets="0.5", **_inputs(registered_lm))
    theirs = register_task(team=rival, user=mallory, name="theirs",
                           upload=SimpleUploadedFile("t.jsonl", task_file.read_bytes()))
    with pytest.raises(Http404):  # rival's task in acme's sweep
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5", tasks=[theirs], **_inputs(registered_lm))
    assert not SweepJob.objects.exists()


def test_inputs_are_checked_as_a_merges(registered_lm, alice, acme):
    base, (e1, _) = registered_lm["base"], registered_lm["experts"]
    with pytest.raises(ValidationError, match="lm-expert-1 is registered as an expert, not a base"):
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5", method="task_arithmetic", base=e1,
                            experts=[(base, {"weight": 1.0})])
    with pytest.raises(ValidationError, match="Choose at least one expert"):
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5", method="task_arithmetic", base=base, experts=[])


# --- the runner ---------------------------------------------------------------------------------

def _run_sweep(run_on_commit, **kwargs) -> SweepJob:
    with run_on_commit():
        sweep = sweeps.create_sweep(**kwargs)
    sweep.refresh_from_db()
    return sweep


def _fraction(point) -> float:
    return point["planned_expert_bytes"] / point["full_expert_bytes"]


def test_a_sweep_without_tasks_measures_every_budget_in_one_pass(registered_lm, alice, acme, run_on_commit):
    sweep = _run_sweep(run_on_commit, user=alice, team=acme, budgets="0.5, 0.1, 0.25", sketch_rank=0,
                       **_inputs(registered_lm))
    assert sweep.status == Status.SUCCEEDED, sweep.error and sweep.sketch_rank == 0
    assert [p["budget"] for p in sweep.points] == ["0.5", "0.1", "0.25", "1"]
    assert {p["mode"] for p in sweep.points} == {"blocks"} and not any(p["sketch_bytes"] for p in sweep.points)
    by_size = sorted(sweep.points, key=lambda p: p["budget_bytes"])
    planned = [p["planned_expert_bytes"] for p in by_size]
    assert planned == sorted(planned) and planned[0] < planned[-1]
    full = sweep.points[-1]
    assert full["planned_expert_bytes"] > 0 and full["deviation"]["update_relative"] == pytest.approx(0.0, abs=1e-6)
    assert all(p["deviation"]["update_relative"] >= 0 for p in sweep.points)
    assert sweep.points[1]["deviation"]["update_relative"] > 1e-3  # a tenth of the bytes is not the full merge
    assert all(p["plan_digest"] and p["blocks_total"] > 0 for p in sweep.points)
    assert all("scores" not in p and "expert_bytes_read" not in p for p in sweep.points)
    assert sweep.references == [] and not EvalResult.objects.exists()
    messages = [e["msg"] for e in sweep.log]
    assert "deviation measured for every budget in one pass" in messages and messages[-1] == "succeeded: 4 budgets"


def test_a_sweep_with_tasks_merges_and_scores_every_budget(registered_lm, reverse_task, alice, acme, run_on_commit):
    sweep = _run_sweep(run_on_commit, user=alice, team=acme, budgets="0.1, 0.25", tasks=[reverse_task],
                       sketch_rank=0, **_inputs(registered_lm))
    assert sweep.status == Status.SUCCEEDED, sweep.error
    assert [p["budget"] for p in sweep.points] == ["0.1", "0.25", "1"]
    for point in sweep.points:
        assert set(point["scores"]) == {"reverse"} and 0.0 <= point["scores"]["reverse"] <= 1.0
        # storage reads are measured (0 when the page cache held every byte); requests are exact
        assert point["expert_bytes_read"] is not None and point["expert_bytes_read"] >= 0
        assert 0 < point["expert_bytes_requested"] <= point["full_expert_bytes"]
        assert len(point["model_hash"]) == 64
    requested = [p["expert_bytes_requested"] for p in sweep.points]
    assert requested == sorted(requested)  # a larger budget reads at least as much
    assert len({p["model_hash"] for p in sweep.points}) == 3  # three different merges
    base, (e1, e2) = registered_lm["base"], registered_lm["experts"]
    assert [(r["label"], r["role"], r["checkpoint_id"]) for r in sweep.references] == [
        ("lm-base", "base", base.pk), ("lm-expert-1", "expert", e1.pk), ("lm-expert-2", "expert", e2.pk)]
    assert sweep.references[0]["model_hash"] == model_fingerprint(base.path)
    assert all(set(r["scores"]) == {"reverse"} for r in sweep.references)
    # every model's score is in the cache, and the budgets' merges are gone
    hashes = {p["model_hash"] for p in sweep.points} | {r["model_hash"] for r in sweep.references}
    assert set(EvalResult.objects.values_list("model_hash", flat=True)) == hashes
    assert not list(sweep_output_dir(sweep).glob("budget-*"))
    assert sweep.log[-1]["msg"] == "succeeded: 3 budgets, each merged and scored on 1 task(s)"


# --- with low-rank sketches -----------------------------------------------------------------------

def _sketch_inputs(registered_sketch_lm) -> dict:
    return {"method": "task_arithmetic", "base": registered_sketch_lm["base"],
            "experts": [(e, {"weight": 0.5}) for e in registered_sketch_lm["experts"]]}


def test_a_sweep_with_sketches_merges_and_scores_both_modes(registered_sketch_lm, reverse_task, alice, acme,
                                                            run_on_commit):
    """task_arithmetic sketches by default: every budget is planned, merged and scored with the
    experts' low-rank sketches and with exact blocks only."""
    sweep = _run_sweep(run_on_commit, user=alice, team=acme, budgets="0.1, 0.25", tasks=[reverse_task],
                       **_sketch_inputs(registered_sketch_lm))
    assert sweep.status == Status.SUCCEEDED, sweep.error
    assert sweep.sketch_rank is None  # the method's default
    assert [(p["budget"], p["mode"]) for p in sweep.points] == [
        ("0.1", "sketch"), ("0.1", "blocks"), ("0.25", "sketch"), ("0.25", "blocks"), ("1", "sketch"), ("1", "blocks")]
    sketched, blocks = sweep.points[0::2], sweep.points[1::2]
    rank = sketched[0]["sketch_rank"]
    assert rank > 0 and all(p["sketch_rank"] == rank for p in sketched)
    for s, b in zip(sketched[:2], blocks[:2]):  # budgets under the full one
        # the sketch plan spends part of the budget on sketches, within the budget
        assert 0 < s["sketch_bytes"] < s["planned_expert_bytes"] <= s["budget_bytes"]
        assert s["block_bytes"] == s["planned_expert_bytes"] - s["sketch_bytes"] and s["sketches_planned"] > 0
        assert b["sketch_bytes"] == 0 and b["sketch_rank"] == 0 and b["planned_expert_bytes"] <= b["budget_bytes"]
        # the rank-2 deltas are nearly all in the sketches: far closer to the full merge
        assert s["deviation"]["update_relative"] < b["deviation"]["update_relative"] / 2
        assert s["certificate"] < b["certificate"]
        # both merges were written and scored: the sketch merge read sketches, the other none
        assert s["sketch_bytes_requested"] > 0 and not b["sketch_bytes_requested"]
        assert s["model_hash"] != b["model_hash"] and "merged_with" not in s and "merged_with" not in b
        assert set(s["scores"]) == set(b["scores"]) == {"reverse"}
    # at the full budget both modes plan every block and no sketch: one merge, its numbers for both
    full_s, full_b = sketched[2], blocks[2]
    assert full_s["sketch_bytes"] == 0 and full_s["plan_digest"] == full_b["plan_digest"]
    assert full_b["merged_with"] == "sketch" and full_b["model_hash"] == full_s["model_hash"]
    assert full_b["scores"] == full_s["scores"]
    assert len({p["model_hash"] for p in sweep.points}) == 5
    messages = [e["msg"] for e in sweep.log]
    assert f"every budget planned twice: with sketches of rank ≤ {rank} and with exact blocks only" in messages
    assert messages[-1] == "succeeded: 3 budgets, with and without sketches, each merged and scored on 1 task(s)"
    assert not list(sweep_output_dir(sweep).glob("budget-*"))


def test_a_sweep_without_sketches_in_the_index_sweeps_blocks_only(tmp_path, alice, acme, run_on_commit):
    """Experts that change no matrix (only norm weights) have no sketch in the index: the sketch
    points would repeat the blocks ones, so the sweep keeps the blocks ones and says why."""
    from safetensors.torch import load_file, save_file

    from mergehub.registry.services import register_checkpoint
    from tests.fixtures.family import make_family

    family = make_family(tmp_path / "norms")
    base_tensors = load_file(str(family["base"] / "model.safetensors"))
    for path in family["experts"]:
        tensors = load_file(str(path / "model.safetensors"))
        tensors.update({k: v for k, v in base_tensors.items() if v.dim() == 2})
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="n-base", role="base", family_name="norms",
                                   local_path=str(family["base"]))
    experts = []
    for k, path in enumerate(family["experts"], start=1):
        with run_on_commit():
            expert = register_checkpoint(team=acme, user=alice, name=f"n-expert-{k}", role="expert",
                                         family_name="norms", local_path=str(path))
        expert.refresh_from_db()
        assert expert.index_stats["sketch_rank"] > 0 and expert.index_stats["sketched_tensors"] == 0
        experts.append((expert, {"weight": 0.5}))
    sweep = _run_sweep(run_on_commit, user=alice, team=acme, budgets="0.25", method="task_arithmetic",
                       base=base, experts=experts)
    assert sweep.status == Status.SUCCEEDED, sweep.error
    assert [(p["budget"], p["mode"]) for p in sweep.points] == [("0.25", "blocks"), ("1", "blocks")]
    assert any(e["msg"].startswith("no sketch of rank ≤") and "swept with exact blocks only" in e["msg"]
               for e in sweep.log)
    assert sweep.log[-1]["msg"] == "succeeded: 2 budgets"


def test_a_sweep_checks_its_sketch_rank(registered_sketch_lm, alice, acme):
    with pytest.raises(ValidationError) as excinfo:
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5", sketch_rank=999, **_sketch_inputs(registered_sketch_lm))
    assert excinfo.value.message_dict["sketch_rank"] == [
        "Sketch rank must be a whole number from 0 (off) to 256, got 999."]
    indexed = registered_sketch_lm["experts"][0].index_stats["sketch_rank"]
    with pytest.raises(ValidationError) as excinfo:  # more than the index holds
        sweeps.create_sweep(user=alice, team=acme, budgets="0.5", sketch_rank=indexed + 1,
                            **_sketch_inputs(registered_sketch_lm))
    assert f"are indexed with sketches up to rank {indexed}" in excinfo.value.message_dict["sketch_rank"][0]
    assert not SweepJob.objects.exists()


def test_retry_keeps_the_sketch_rank(registered_sketch_lm, alice, acme):
    sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.5", sketch_rank=0, **_sketch_inputs(registered_sketch_lm))
    sweep = sweeps.cancel_sweep(sweep=sweep, user=alice)
    assert sweeps.retry_sweep(sweep=sweep, user=alice).sketch_rank == 0


def test_retry_queues_the_same_sweep(registered_lm, alice, carol, bob, acme, run_on_commit):
    sweep = _run_sweep(run_on_commit, user=alice, team=acme, budgets="0.5", **_inputs(registered_lm))
    with pytest.raises(PermissionDenied):
        sweeps.retry_sweep(sweep=sweep, user=bob)
    with run_on_commit():
        retry = sweeps.retry_sweep(sweep=sweep, user=carol)
    retry.refresh_from_db()
    assert retry.retry_of == sweep and retry.author == carol and retry.status == Status.SUCCEEDED
    assert retry.budgets == sweep.budgets and retry.config == sweep.config
    assert set(retry.experts.all()) == set(sweep.experts.all())
    assert [p["plan_digest"] for p in retry.points] == [p["plan_digest"] for p in sweep.points]
    assert f"(a retry of sweep #{sweep.pk})" in retry.log[0]["msg"]


def test_an_active_sweep_cannot_be_retried_and_a_queued_one_is_cancelled(registered_lm, alice, bob, acme):
    sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.5", **_inputs(registered_lm))
    with pytest.raises(ValidationError, match="is still queued"):
        sweeps.retry_sweep(sweep=sweep, user=alice)
    with pytest.raises(PermissionDenied):
        sweeps.cancel_sweep(sweep=sweep, user=bob)
    sweep = sweeps.cancel_sweep(sweep=sweep, user=alice)
    assert sweep.status == Status.CANCELLED and sweep.log[-1]["msg"] == "cancelled by alice before it started"
    with pytest.raises(ValidationError, match="already cancelled"):
        sweeps.cancel_sweep(sweep=sweep, user=alice)


def test_a_sweep_whose_checkpoint_was_deleted_cannot_be_retried(registered_lm, alice, acme):
    sweep = sweeps.create_sweep(user=alice, team=acme, budgets="0.5", **_inputs(registered_lm))
    sweep = sweeps.cancel_sweep(sweep=sweep, user=alice)
    registered_lm["experts"][1].delete()
    with pytest.raises(ValidationError, match="A checkpoint of this sweep was deleted"):
        sweeps.retry_sweep(sweep=sweep, user=alice)
