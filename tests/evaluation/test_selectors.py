"""Reads for evaluation: scoped to the user's teams, the benchmark rows a report shows, what a
merge keeps of each expert, and a checkpoint's newest scores."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.http import Http404
from django.utils import timezone

from mergehub.evaluation import selectors
from mergehub.evaluation.models import EvalResult, EvaluationJob, SweepJob
from mergehub.scoring import model_fingerprint

pytestmark = pytest.mark.django_db


# --- what the merge keeps ---------------------------------------------------------------------

def _r(score: float, higher: bool = True) -> EvalResult:
    return EvalResult(score=score, higher_is_better=higher)


def _row(label: str, role: str, **scores) -> dict:
    return {"label": label, "role": role, "results": {t: (s if isinstance(s, EvalResult) else _r(s))
                                                      for t, s in scores.items()}}


def test_kept_shares_take_each_experts_best_task_over_the_base():
    rows = [_row("merge", "merge", math=0.6, code=0.3, chat=0.5),
            _row("base", "base", math=0.2, code=0.1, chat=0.5),
            _row("math expert", "expert", math=0.8, code=0.1, chat=0.4),  # gains most on math (+0.6)
            _row("code expert", "expert", math=0.3, code=0.6, chat=0.5)]  # on code (+0.5; math only +0.1)
    kept = selectors.kept_shares(rows)
    assert [(k["expert"], k["task"]) for k in kept] == [("math expert", "math"), ("code expert", "code")]
    assert kept[0]["expert_score"] == 0.8 and kept[0]["merge_score"] == 0.6
    assert kept[0]["share"] == pytest.approx(0.75) and kept[1]["share"] == pytest.approx(0.5)


def test_kept_shares_without_a_base_take_the_experts_best_score():
    rows = [_row("merge", "merge", a=0.5, b=0.2), _row("e", "expert", a=0.4, b=0.9)]
    assert selectors.kept_shares(rows) == [
        {"expert": "e", "task": "b", "expert_score": 0.9, "merge_score": 0.2, "share": pytest.approx(0.2 / 0.9)}]


def test_kept_shares_when_lower_is_better():
    """Perplexity: the expert's best task is where it lowers it most; the share is expert / merge."""
    rows = [_row("merge", "merge", text=_r(20.0, False)), _row("base", "base", text=_r(40.0, False)),
            _row("e", "expert", text=_r(10.0, False))]
    (kept,) = selectors.kept_shares(rows)
    assert kept["task"] == "text" and kept["share"] == pytest.approx(0.5)


def test_kept_shares_edge_cases():
    assert selectors.kept_shares([_row("base", "base", a=0.5), _row("e", "expert", a=0.6)]) == []  # no merge
    rows = [_row("merge", "merge", a=0.5), _row("e", "expert", b=0.6),  # the merge was not scored on b
            _row("z", "expert"), _row("zero", "expert", a=0.0)]  # no scores; a zero score
    assert selectors.kept_shares(rows) == [
        {"expert": "zero", "task": "a", "expert_score": 0.0, "merge_score": 0.5, "share": None}]


# --- a run's benchmark --------------------------------------------------------------------------

def test_benchmark_for_run(evaluated_run, registered_lm):
    run, job = evaluated_run["run"], evaluated_run["job"]
    benchmark = selectors.benchmark_for_run(run)
    assert benchmark.job == job and benchmark.tasks == ["reverse"]
    assert [(r["label"], r["role"]) for r in benchmark.rows] == [
        (f"merge (run #{run.pk})", "merge"), ("lm-base", "base"), ("lm-expert-1", "expert"), ("lm-expert-2", "expert")]
    merge = benchmark.rows[0]["results"]["reverse"]
    assert merge.model_hash == model_fingerprint(run.output_path) and merge.n == 6
    assert [k["expert"] for k in benchmark.kept] == ["lm-expert-1", "lm-expert-2"]
    assert all(k["task"] == "reverse" and k["merge_score"] == merge.score for k in benchmark.kept)
    assert [(s["task"], s["label"]) for s in benchmark.samples] == [("reverse", f"merge (run #{run.pk})")]
    assert benchmark.samples[0]["samples"] == merge.samples


def test_the_newest_evaluation_of_a_run_is_shown(evaluated_run, alice, acme):
    run = evaluated_run["run"]
    newer = EvaluationJob.objects.create(team=acme, author=alice, run=run, with_references=True)
    benchmark = selectors.benchmark_for_run(run)
    assert benchmark.job == newer and benchmark.rows == [] and benchmark.kept == []  # queued: nothing yet


def test_a_run_never_evaluated_has_an_empty_benchmark(lm_run):
    benchmark = selectors.benchmark_for_run(lm_run)
    assert benchmark.job is None and benchmark.tasks == benchmark.rows == benchmark.samples == []


def test_a_deleted_tasks_scores_stay_in_the_report(evaluated_run, alice):
    from mergehub.evaluation.task_registry import delete_task

    run, task = evaluated_run["run"], evaluated_run["task"]
    delete_task(task=task, user=alice)
    benchmark = selectors.benchmark_for_run(run)
    assert benchmark.tasks == ["reverse"] and all(set(r["results"]) == {"reverse"} for r in benchmark.rows)


def test_only_the_jobs_tasks_are_shown(evaluated_run, task_file, alice, acme, run_on_commit):
    """The merge was also scored on another task (another evaluation): this job's rows leave it out."""
    from mergehub.evaluation import services
    from mergehub.evaluation.task_registry import register_task

    run = evaluated_run["run"]
    other = register_task(team=acme, user=alice, name="reverse-8", path=str(task_file),
                          task_settings={"max_new_tokens": 8})
    with run_on_commit():
        services.queue_evaluation(user=alice, team=acme, tasks=[other], run=run, with_references=False)
    assert selectors.benchmark_for_run(run).tasks == ["reverse-8"]
    assert selectors.benchmark_for_job(evaluated_run["job"]).tasks == ["reverse"]
    assert all(set(r["results"]) == {"reverse"} for r in selectors.benchmark_for_job(evaluated_run["job"]).rows)


# --- a checkpoint's scores ----------------------------------------------------------------------

def _job_scoring(checkpoint, model_hash: str, finished_ago: int, status="succeeded") -> EvaluationJob:
    return EvaluationJob.objects.create(
        team=checkpoint.team, checkpoint=checkpoint, status=status,
        finished_at=timezone.now() - timedelta(minutes=finished_ago),
        subjects=[{"label": checkpoint.name, "role": "checkpoint", "checkpoint_id": checkpoint.pk,
                   "model_hash": model_hash}])


def _result(team, model_hash: str, task: str, score: float) -> EvalResult:
    return EvalResult.objects.create(team=team, model_hash=model_hash, task_name=task, task_hash="t" * 64,
                                     settings_key=task, metric="exact_match", n=10, score=score,
                                     ci_low=0.0, ci_high=1.0)


def test_checkpoint_scores_are_those_of_its_newest_fingerprint(registered_lm, acme):
    base = registered_lm["base"]
    assert selectors.checkpoint_scores(base) == {} and selectors.checkpoint_fingerprint(base) is None
    old, new = "a" * 64, "b" * 64
    _result(acme, old, "reverse", 0.1)
    _result(acme, old, "sort", 0.2)
    _result(acme, new, "reverse", 0.9)
    _job_scoring(base, old, finished_ago=10)
    _job_scoring(base, new, finished_ago=5)  # its files were replaced and re-indexed since
    _job_scoring(base, "c" * 64, finished_ago=1, status="failed")  # a failed job does not count
    _job_scoring(registered_lm["experts"][0], "d" * 64, finished_ago=0)  # another checkpoint
    assert selectors.checkpoint_fingerprint(base) == new
    scores = selectors.checkpoint_scores(base)
    assert set(scores) == {"reverse"} and scores["reverse"].score == 0.9
    latest = EvaluationJob.objects.create(team=acme, checkpoint=base)  # queued
    assert selectors.latest_checkpoint_evaluation(base) == latest


def test_checkpoint_scores_from_a_real_evaluation(registered_lm, reverse_task, alice, acme, run_on_commit):
    from mergehub.evaluation import services

    expert = registered_lm["experts"][0]
    with run_on_commit():
        services.queue_evaluation(user=alice, team=acme, tasks=[reverse_task], checkpoint=expert)
    scores = selectors.checkpoint_scores(expert)
    assert list(scores) == ["reverse"] and scores["reverse"].model_hash == model_fingerprint(expert.path)
    assert selectors.checkpoint_scores(registered_lm["experts"][1]) == {}


# --- scoping ----------------------------------------------------------------------------------------

def test_reads_are_scoped_to_the_users_teams(evaluated_run, alice, bob, mallory, acme):
    task, job = evaluated_run["task"], evaluated_run["job"]
    sweep = SweepJob.objects.create(team=acme, author=alice, name="s", method="ties", budgets=["1"])
    assert list(selectors.tasks_for(user=bob)) == [task] and selectors.get_task(user=bob, pk=task.pk) == task
    assert list(selectors.evaluations_for(user=bob, team=acme)) == [job]
    assert list(selectors.sweeps_for(user=bob)) == [sweep]
    assert not selectors.tasks_for(user=mallory).exists() and not selectors.evaluations_for(user=mallory).exists()
    assert not selectors.sweeps_for(user=mallory).exists()
    for get, pk in ((selectors.get_task, task.pk), (selectors.get_evaluation, job.pk),
                    (selectors.get_sweep, sweep.pk)):
        with pytest.raises(Http404):
            get(user=mallory, pk=pk)


def test_sweep_tasks_name_tasks_deleted_since(reverse_task, alice, acme):
    sweep = SweepJob.objects.create(team=acme, author=alice, name="s", method="ties", budgets=["0.5", "1"],
                                    points=[{"budget": "0.5", "scores": {"reverse": 0.5, "gone": 0.1}},
                                            {"budget": "1", "scores": {"later": 0.2}}])
    sweep.tasks.set([reverse_task])
    assert selectors.sweep_tasks(sweep) == ["reverse", "gone", "later"]
