"""The checkpoint page's Retry and Delete for a failed checkpoint (registry/views.py)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mergehub.registry.models import Checkpoint, IndexJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed(registered_family, alice, acme):
    """An expert of acme's family whose (only) index job failed."""
    ckpt = Checkpoint.objects.create(team=acme, family=registered_family["base"].family, name="broken",
                                     role="expert", index_status="failed",
                                     index_error="<b>disk</b> went away", added_by=alice)
    job = IndexJob.objects.create(team=acme, checkpoint=ckpt, author=alice, status="failed",
                                  error="<b>disk</b> went away")
    return ckpt, job


def test_a_failed_checkpoint_offers_retry_and_delete_to_members(failed, carol_client, bob_client):
    ckpt, job = failed
    page = carol_client.get(reverse("registry:detail", args=[ckpt.pk])).content.decode()
    assert reverse("registry:retry_index", args=[ckpt.pk, job.pk]) in page
    assert reverse("registry:delete", args=[ckpt.pk]) in page
    assert "&lt;b&gt;disk&lt;/b&gt; went away" in page and "<b>disk</b>" not in page
    viewer_page = bob_client.get(reverse("registry:detail", args=[ckpt.pk])).content.decode()
    assert reverse("registry:delete", args=[ckpt.pk]) not in viewer_page
    assert "Indexing failed" in viewer_page or "Registration failed" in viewer_page


def test_a_ready_checkpoint_offers_no_delete(registered_family, alice_client):
    expert = registered_family["experts"][0]
    page = alice_client.get(reverse("registry:detail", args=[expert.pk])).content.decode()
    assert reverse("registry:delete", args=[expert.pk]) not in page


def test_retry_requeues_the_index_job(failed, carol_client, django_capture_on_commit_callbacks):
    ckpt, job = failed
    with django_capture_on_commit_callbacks() as queued:
        response = carol_client.post(reverse("registry:retry_index", args=[ckpt.pk, job.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("registry:detail", args=[ckpt.pk])
    assert len(queued) == 1
    retry = IndexJob.objects.get(retry_of=job)
    assert retry.status == "queued"
    ckpt.refresh_from_db()
    assert ckpt.index_status == "pending" and ckpt.index_error == ""


def test_delete_answers_by_role(failed, bob_client, mallory_client, carol_client):
    ckpt, _ = failed
    url = reverse("registry:delete", args=[ckpt.pk])
    assert bob_client.post(url).status_code == 403
    assert mallory_client.post(url).status_code == 404
    assert mallory_client.post(reverse("registry:delete", args=[10**6])).status_code == 404
    assert carol_client.get(url).status_code == 405
    assert Checkpoint.objects.filter(pk=ckpt.pk).exists()
    response = carol_client.post(url, follow=True)
    assert response.redirect_chain == [(reverse("registry:list"), 302)]
    assert "Deleted broken; its files were left where they are." in response.content.decode()
    assert not Checkpoint.objects.filter(pk=ckpt.pk).exists()


def test_delete_in_use_is_refused_with_the_reason(registered_family, alice, acme, alice_client):
    from mergehub.runs.services import create_run
    from tests.pages.conftest import ties_inputs

    run = create_run(user=alice, team=acme, name="holding", **ties_inputs(registered_family))
    expert = registered_family["experts"][0]
    response = alice_client.post(reverse("registry:delete", args=[expert.pk]), follow=True)
    assert response.redirect_chain == [(reverse("registry:detail", args=[expert.pk]), 302)]
    assert f"Run #{run.pk} (holding) is queued with expert-1" in response.content.decode()
    assert Checkpoint.objects.filter(pk=expert.pk).exists()
