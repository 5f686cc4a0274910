"""Bad input becomes a form error on the page, and nothing is registered or queued."""

from __future__ import annotations

import json
import os

import pytest
import torch
from django.urls import reverse

from mergehub.registry.models import Checkpoint
from mergehub.runs.models import MergeRun
from tests.fixtures.family import make_mismatched_expert
from tests.pages.conftest import merge_post

pytestmark = pytest.mark.django_db


def _register(client, path, *, role="expert", family_name="tiny-llama", name="candidate"):
    return client.post(reverse("registry:register"), {
        "name": name, "role": role, "family_name": family_name, "source": "local", "local_path": str(path)})


def _field_errors(response, field="local_path") -> str:
    assert response.status_code == 200
    return " ".join(response.context["form"].errors.get(field, []))


@pytest.fixture
def no_queueing(django_capture_on_commit_callbacks):
    """Asserts that the block queued no job and created no row."""
    counts = (Checkpoint.objects.count(), MergeRun.objects.count())
    with django_capture_on_commit_callbacks() as queued:
        yield
    assert queued == []
    assert (Checkpoint.objects.count(), MergeRun.objects.count()) == counts


def test_local_path_outside_the_roots(alice_client, registered_family, tmp_path_factory, no_queueing):
    outside = tmp_path_factory.mktemp("outside")
    response = _register(alice_client, outside)
    assert "is not inside your team's checkpoint roots" in _field_errors(response)
    assert b"is not inside your team&#x27;s checkpoint roots" in response.content


def test_symlink_escaping_a_root(alice_client, registered_family, tmp_path, tmp_path_factory, no_queueing):
    outside = tmp_path_factory.mktemp("secret")
    os.symlink(outside, tmp_path / "innocent")
    errors = _field_errors(_register(alice_client, tmp_path / "innocent"))
    assert "is not inside your team's checkpoint roots" in errors and "secret" not in errors


def test_missing_directory(alice_client, registered_family, tmp_path, no_queueing):
    assert "no such directory" in _field_errors(_register(alice_client, tmp_path / "nope"))


def test_directory_without_safetensors(alice_client, registered_family, tmp_path, no_queueing):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert "safetensors" in _field_errors(_register(alice_client, empty))


def test_pickle_only_checkpoint(alice_client, registered_family, tmp_path, no_queueing):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save({"w": torch.zeros(2)}, pickled / "pytorch_model.bin")
    (pickled / "config.json").write_text(json.dumps({"model_type": "llama"}))
    message = _field_errors(_register(alice_client, pickled))
    assert "pickle" in message and "save_pretrained" in message


def test_expert_that_does_not_match_its_base(alice_client, registered_family, tmp_path, no_queueing):
    mismatched = make_mismatched_expert(tmp_path)
    message = _field_errors(_register(alice_client, mismatched))
    assert "does not match base" in message and "model.embed_tokens.weight" in message


def test_expert_of_an_unknown_family(alice_client, registered_family, family, no_queueing):
    assert "No family named" in _field_errors(_register(alice_client, family["experts"][0], family_name="nope"),
                                              "family_name")


def test_missing_source_is_a_form_error(alice_client, registered_family, no_queueing):
    response = alice_client.post(reverse("registry:register"), {"name": "x", "role": "expert", "source": "hf"})
    assert response.context["form"].errors["hf_repo_id"]


# --- the merge form ---------------------------------------------------------------------------

def _merge(client, registered_family, **overrides):
    response = client.post(reverse("runs:new"), merge_post(registered_family, **overrides))
    assert response.status_code == 200, "expected the form again, with errors"
    return response.context["form"]


def _all_errors(form) -> str:
    return " ".join(" ".join(errs) for errs in form.errors.values())


@pytest.mark.parametrize("budget", ["0", "-1", "0.0", "0MB"])
def test_budget_not_positive(alice_client, registered_family, budget, no_queueing):
    form = _merge(alice_client, registered_family, budget=budget)
    assert form.errors.get("budget"), form.errors


def test_budget_not_a_number_or_size(alice_client, registered_family, no_queueing):
    assert _merge(alice_client, registered_family, budget="lots").errors.get("budget")


def test_parameter_above_its_maximum(alice_client, registered_family, no_queueing):
    e1 = registered_family["experts"][0]
    form = _merge(alice_client, registered_family, **{f"expert_{e1.pk}__density": "1.5"})
    assert form.errors[f"expert_{e1.pk}__density"]


def test_parameter_not_a_number(alice_client, registered_family, no_queueing):
    form = _merge(alice_client, registered_family, param__lambda="abc")
    assert form.errors["param__lambda"]


def test_required_parameter_missing(alice_client, registered_family, no_queueing):
    e2 = registered_family["experts"][1]
    form = _merge(alice_client, registered_family, **{f"expert_{e2.pk}__weight": ""})
    assert "Enter weight for expert-2" in " ".join(form.errors[f"expert_{e2.pk}__weight"])


def test_parameter_combination_the_engine_refuses(alice_client, registered_family, no_queueing):
    """della needs 0 < density ± epsilon < 1: each value is in range alone, so the engine says no."""
    e1, e2 = registered_family["experts"]
    form = _merge(alice_client, registered_family, method="della",
                  **{f"expert_{e1.pk}__epsilon": "0.15", f"expert_{e2.pk}__epsilon": "0.15",
                     f"expert_{e1.pk}__density": "0.1"})
    assert "epsilon" in _all_errors(form)


def test_slerp_needs_its_t(alice_client, registered_family, no_queueing):
    e1, e2 = registered_family["experts"]
    form = _merge(alice_client, registered_family, method="slerp", **{f"expert_{e2.pk}__use": None})
    assert form.errors["param__t"]


def test_no_expert_chosen(alice_client, registered_family, no_queueing):
    e1, e2 = registered_family["experts"]
    form = _merge(alice_client, registered_family, **{f"expert_{e1.pk}__use": None, f"expert_{e2.pk}__use": None})
    assert "Choose at least one expert" in _all_errors(form)


def test_expert_not_indexed_yet_cannot_be_chosen(alice_client, registered_family, no_queueing):
    e1 = registered_family["experts"][0]
    Checkpoint.objects.filter(pk=e1.pk).update(index_status="pending")
    page = alice_client.get(reverse("runs:new")).content.decode()
    assert "expert-1" not in page  # not offered at all (registry.selectors.merge_choices_for)
    form = _merge(alice_client, registered_family, **{f"expert_{registered_family['experts'][1].pk}__use": None})
    assert "Choose at least one expert" in _all_errors(form)


@pytest.fixture
def rival_expert(mallory, rival):
    """An indexed expert of mallory's team, made directly (no files needed: it is never read)."""
    return Checkpoint.objects.create(team=rival, name="rival-expert", role="expert", index_status="ready",
                                     path="/nowhere", added_by=mallory)


def test_expert_of_another_team_is_named_not_dropped(alice_client, registered_family, rival_expert, no_queueing):
    """Fields exist only for acme's experts, so a ticked box for another team's expert used to
    vanish: now it is an error naming the id, worded as for an id that exists nowhere."""
    ticked = {f"expert_{rival_expert.pk}__use": "on", f"expert_{rival_expert.pk}__weight": "1.0",
              "expert_999999__use": "on"}
    response = alice_client.post(reverse("runs:new"), merge_post(registered_family, **ticked))
    assert response.status_code == 200
    errors = response.context["form"].non_field_errors()
    theirs = f"Expert #{rival_expert.pk} is not one of your team's indexed experts for the chosen base."
    assert theirs in errors and "Expert #999999 is not one of your team's indexed experts" in " ".join(errors)
    assert theirs.replace("'", "&#x27;").encode() in response.content
    assert b"rival-expert" not in response.content

    preview = alice_client.post(reverse("runs:preview"), merge_post(registered_family, **ticked))
    assert preview.context["plan"] is None
    assert theirs in " ".join(preview.context["problems"])
