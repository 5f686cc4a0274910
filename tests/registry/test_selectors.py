"""Registry reads: what the merge form may offer (registry/selectors.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mergehub.registry.models import Checkpoint
from mergehub.registry.selectors import merge_choices_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def not_ready(registered_family, acme):
    """One expert of each state that is not ready, and a failed base of another family."""
    family = registered_family["base"].family
    made = {status: Checkpoint.objects.create(team=acme, family=family, name=f"{status}-expert", role="expert",
                                              index_status=status)
            for status in ("pending", "indexing", "failed")}
    made["base"] = Checkpoint.objects.create(team=acme, name="failed-base", role="base", index_status="failed")
    return made


def test_merge_choices_are_the_teams_ready_checkpoints(registered_family, not_ready, alice, mallory, rival):
    Checkpoint.objects.create(team=rival, name="rival-ready", role="base", index_status="ready")
    names = set(merge_choices_for(user=alice, team=registered_family["base"].team).values_list("name", flat=True))
    assert names == {"base", "expert-1", "expert-2"}
    # another team's: never, even when asked for by team
    assert not merge_choices_for(user=mallory, team=registered_family["base"].team).exists()


def test_the_merge_form_never_offers_a_checkpoint_that_is_not_ready(registered_family, not_ready, alice_client):
    response = alice_client.get(reverse("runs:new"))
    form = response.context["form"]
    assert {c.name for c in form.fields["base"].queryset} == {"base"}
    assert {c.name for c in form.candidates} == {"expert-1", "expert-2"}
    page = response.content.decode()
    for ckpt in not_ready.values():
        assert ckpt.name not in page


def test_a_not_ready_expert_posted_anyway_is_refused(registered_family, not_ready, alice_client):
    from tests.pages.conftest import merge_post

    pending = not_ready["pending"]
    data = merge_post(registered_family, **{f"expert_{pending.pk}__use": "on", f"expert_{pending.pk}__weight": "1"})
    response = alice_client.post(reverse("runs:new"), data)
    assert response.status_code == 200  # the form again, with the error
    assert f"Expert #{pending.pk} is not one of your team's indexed experts" in " ".join(
        response.context["form"].non_field_errors())
