"""Training the demo family as a job: queue it (team admins, one at a time), train it with
mergehub.family (a shortened recipe here, so it takes seconds), register its base and
experts (indexed) and its four tasks; a family already on disk is reused."""

from __future__ import annotations

import functools

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from mergehub.evaluation import training
from mergehub.evaluation.models import EvalTask, FamilyJob
from mergehub.registry.models import Checkpoint, Family

pytestmark = pytest.mark.django_db
Status = FamilyJob.Status


@pytest.fixture
def short_recipe(monkeypatch):
    """The real trainer with every phase cut to a step or two, in this process (starting
    expert processes would cost more than the training). The runner takes ``train_family``
    and ``load_family`` from mergehub.family when it runs."""
    import dataclasses

    import mergehub.family as family
    from mergehub.family.train import train_family

    recipe = dataclasses.replace(family.DEFAULT_RECIPE.scaled(0.01), batch_size=16)

    def short_training(out_dir, **kwargs):
        return train_family(out_dir, **{**kwargs, "recipe": recipe, "workers": 1})

    monkeypatch.setattr(family, "train_family", short_training)
    monkeypatch.setattr(family, "load_family", functools.partial(family.load_family, recipe=recipe))
    return recipe


def _train(run_on_commit, **kwargs) -> FamilyJob:
    with run_on_commit():
        job = training.queue_family_training(**kwargs)
    job.refresh_from_db()
    return job


def test_training_registers_the_family_and_its_tasks_and_a_second_run_reuses_it(
        short_recipe, alice, acme, run_on_commit):
    from mergehub.family import TASK_NAMES

    job = _train(run_on_commit, team=acme, user=alice, seed=3)
    assert job.status == Status.SUCCEEDED, job.error
    assert job.out_dir == str(training.family_dir(acme, "tiny-llama", 3)) and job.queue == "cpu"
    family = Family.objects.get(team=acme, name="tiny-llama")
    assert job.family == family
    base = Checkpoint.objects.get(team=acme, name="tiny-llama-base")
    assert base.role == "base" and base.family == family and base.is_ready
    experts = Checkpoint.objects.filter(team=acme, role="expert").order_by("name")
    assert sorted(e.name for e in experts) == sorted(f"tiny-llama-{t}" for t in TASK_NAMES)
    assert all(e.is_ready and e.family == family for e in experts), [(e.name, e.index_status) for e in experts]
    assert all(e.path.startswith(job.out_dir) for e in [base, *experts])
    tasks = EvalTask.objects.filter(team=acme)
    assert sorted(t.name for t in tasks) == sorted(TASK_NAMES) and all(t.source == "builtin" for t in tasks)
    assert job.summary["seed"] == 3 and job.summary["tasks"] == list(TASK_NAMES)
    assert job.summary["parameters"] > 0 and job.summary["root"] == job.out_dir
    messages = [e["msg"] for e in job.log]
    assert any(m.startswith(f"training the family into {job.out_dir} (seed 3") for m in messages)
    assert "registered base tiny-llama-base" in messages
    assert messages[-1] == "succeeded: the tiny-llama family and its four tasks are registered"

    # "Train again": the family on disk is reused, nothing is registered twice
    again = _train(run_on_commit, team=acme, user=alice, seed=3)
    assert again.status == Status.SUCCEEDED, again.error
    assert f"reusing the family already trained in {job.out_dir}" in [e["msg"] for e in again.log]
    assert not any(e["msg"].startswith("training the family") for e in again.log)
    assert Checkpoint.objects.filter(team=acme).count() == 5 and EvalTask.objects.filter(team=acme).count() == 4
    assert again.family == family


def test_one_training_at_a_time(alice, acme):
    first = training.queue_family_training(team=acme, user=alice)
    with pytest.raises(ValidationError, match="The tiny-llama family is already being trained"):
        training.queue_family_training(team=acme, user=alice)
    training.cancel_family_training(job=first, user=alice)
    second = training.queue_family_training(team=acme, user=alice)  # once the first is done
    assert second.status == Status.QUEUED and FamilyJob.objects.count() == 2
    assert training.latest_family_job(acme) == second


def test_only_admins_train_or_stop_the_family(alice, carol, bob, acme, mallory):
    for user in (carol, bob, mallory):
        with pytest.raises(PermissionDenied, match="to train the demo family"):
            training.queue_family_training(team=acme, user=user)
    assert not FamilyJob.objects.exists()
    job = training.queue_family_training(team=acme, user=alice)
    with pytest.raises(PermissionDenied):
        training.cancel_family_training(job=job, user=carol)
    job = training.cancel_family_training(job=job, user=alice)
    assert job.status == Status.CANCELLED


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_the_seed_is_checked(seed, alice, acme):
    with pytest.raises(ValidationError, match="The seed must be between 0 and 2"):
        training.queue_family_training(team=acme, user=alice, seed=seed)
    assert not FamilyJob.objects.exists()


def test_a_family_already_on_disk_is_reused(short_recipe, alice, acme, run_on_commit):
    """``make demo`` on a machine where the family was trained before: nothing is trained."""
    import mergehub.family as family

    out = training.family_dir(acme, "tiny-llama", 0)
    family.train_family(out, seed=0)
    stamp = (out / "family.json").stat().st_mtime_ns
    job = _train(run_on_commit, team=acme, user=alice)
    assert job.status == Status.SUCCEEDED, job.error
    assert f"reusing the family already trained in {out}" in [e["msg"] for e in job.log]
    assert (out / "family.json").stat().st_mtime_ns == stamp
    assert Checkpoint.objects.filter(team=acme, index_status="ready").count() == 5
