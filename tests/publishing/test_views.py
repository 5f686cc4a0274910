"""The report's "Get the model" panel and the downloads: every role of the team downloads,
streamed; only listed names are served; another team's user gets 404; a run without a model
gets a notice; only members and admins push."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from django.urls import reverse

from mergehub.publishing.models import HubPush
from tests.pages.conftest import queued_run  # noqa: F401  (fixture)

pytestmark = pytest.mark.django_db


def _body(response) -> bytes:
    assert response.streaming, "a download must stream"
    return b"".join(response.streaming_content)


def test_the_report_lists_the_files_with_their_downloads(merged_run, bob_client):
    response = bob_client.get(reverse("runs:detail", args=[merged_run.pk]))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="model"' in body and 'id="model-files"' in body
    assert reverse("publishing:archive", args=[merged_run.pk]) in body
    assert reverse("publishing:file", args=[merged_run.pk, "config.json"]) in body
    assert "KiB" in body or "MiB" in body  # binary units
    # bob is a viewer: no push form, a line saying who may push
    assert 'id="push-form"' not in body and "Team members and admins can push" in body


def test_members_see_the_push_form(merged_run, carol_client):
    body = carol_client.get(reverse("runs:detail", args=[merged_run.pk])).content.decode()
    assert 'id="push-form"' in body and 'name="token"' in body and 'type="password"' in body


@pytest.mark.parametrize("who", ["alice_client", "bob_client", "carol_client"])
def test_every_role_downloads_a_file_streamed(merged_run, who, request):
    client = request.getfixturevalue(who)
    response = client.get(reverse("publishing:file", args=[merged_run.pk, "config.json"]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="config.json"'
    assert _body(response) == (Path(merged_run.output_path) / "config.json").read_bytes()


def test_a_weight_file_downloads_byte_for_byte(merged_run, bob_client):
    weights = [p for p in Path(merged_run.output_path).iterdir() if p.suffix == ".safetensors"]
    for path in weights:
        response = bob_client.get(reverse("publishing:file", args=[merged_run.pk, path.name]))
        assert int(response["Content-Length"]) == path.stat().st_size
        assert _body(response) == path.read_bytes()


def test_download_all_streams_a_tar_of_the_files(merged_run, bob_client):
    response = bob_client.get(reverse("publishing:archive", args=[merged_run.pk]))
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-tar"
    assert response["Content-Disposition"] == f'attachment; filename="mergehub-run-{merged_run.pk}.tar"'
    data = _body(response)
    out = Path(merged_run.output_path)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
    assert got == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.mark.parametrize("name", ["..", "...", "%2e%2e%2fsecret.txt", "..%2Fsecret.txt", "secret.txt", "link.json",
                                  ".hidden", "config.json%00", "sub"])
def test_names_that_are_not_published_files_are_404(merged_run, bob_client, tmp_path, name):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    out = Path(merged_run.output_path)
    (out / "link.json").symlink_to(secret)
    (out / ".hidden").write_text("x")
    (out / "sub").mkdir()
    url = reverse("publishing:file", args=[merged_run.pk, "PLACEHOLDER"]).replace("PLACEHOLDER", name)
    response = bob_client.get(url)
    assert response.status_code == 404
    assert b"not yours" not in response.content


def test_another_teams_user_gets_404_everywhere(merged_run, mallory_client):
    for url in (reverse("publishing:file", args=[merged_run.pk, "config.json"]),
                reverse("publishing:archive", args=[merged_run.pk])):
        response = mallory_client.get(url)
        assert response.status_code == 404 and not response.streaming
    response = mallory_client.post(reverse("publishing:push", args=[merged_run.pk]), {"repo_id": "acme/model"})
    assert response.status_code == 404
    assert not HubPush.objects.exists()


def test_anonymous_users_are_sent_to_log_in(merged_run, client):
    response = client.get(reverse("publishing:archive", args=[merged_run.pk]))
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_run_without_a_model_gets_a_notice(merged_run, queued_run, bob_client):
    import shutil

    response = bob_client.get(reverse("publishing:archive", args=[queued_run.pk]))
    assert response.status_code == 404
    assert "only a run that succeeded has a merged model" in response.content.decode()
    shutil.rmtree(merged_run.output_path)
    for url in (reverse("publishing:archive", args=[merged_run.pk]),
                reverse("publishing:file", args=[merged_run.pk, "config.json"])):
        response = bob_client.get(url)
        assert response.status_code == 404
        assert "not on disk any more" in response.content.decode()
    page = bob_client.get(reverse("runs:detail", args=[merged_run.pk])).content.decode()
    assert 'id="model-unavailable"' in page and "not on disk any more" in page


def test_a_viewer_downloads_but_cannot_push(merged_run, bob_client):
    response = bob_client.post(reverse("publishing:push", args=[merged_run.pk]),
                               {"repo_id": "acme/merged", "token": "hf_bobsecret"})
    assert response.status_code == 403
    assert not HubPush.objects.exists()


def test_a_member_queues_a_push_and_the_token_is_never_shown(merged_run, carol_client, settings):
    settings.MERGEHUB_HF_ENDPOINT = "http://hub.invalid"
    response = carol_client.post(reverse("publishing:push", args=[merged_run.pk]),
                                 {"repo_id": "acme/merged", "visibility": "private", "token": "hf_carolsecret"})
    assert response.status_code == 302
    assert response["Location"] == reverse("runs:detail", args=[merged_run.pk]) + "#model"
    push = HubPush.objects.get()  # queued: its wake-up waits for a commit that never comes here
    assert (push.status, push.repo_id, push.private, push.author.username) == ("queued", "acme/merged", True, "carol")
    assert push.token == "hf_carolsecret"
    assert "hf_carolsecret" not in str(push.log)
    page = carol_client.get(reverse("runs:detail", args=[merged_run.pk])).content.decode()
    assert 'id="push-history"' in page and "acme/merged" in page
    assert "hf_carolsecret" not in page


def test_pushing_without_choosing_public_stays_private(merged_run, carol_client):
    carol_client.post(reverse("publishing:push", args=[merged_run.pk]), {"repo_id": "acme/merged"})
    assert HubPush.objects.get().private is True


@pytest.mark.parametrize("repo_id", ["", "merged", "acme/../x", "acme/mer ged", "a/b/c", "acme/ünï"])
def test_a_bad_repo_id_is_refused_with_a_message(merged_run, carol_client, repo_id):
    response = carol_client.post(reverse("publishing:push", args=[merged_run.pk]), {"repo_id": repo_id}, follow=True)
    assert not HubPush.objects.exists()
    assert "owner/name" in response.content.decode()


def test_a_queued_push_is_cancelled_and_its_token_erased(merged_run, carol_client):
    carol_client.post(reverse("publishing:push", args=[merged_run.pk]),
                      {"repo_id": "acme/merged", "token": "hf_carolsecret"})
    push = HubPush.objects.get()
    response = carol_client.post(reverse("publishing:push_cancel", args=[merged_run.pk, push.pk]))
    assert response.status_code == 302
    push.refresh_from_db()
    assert (push.status, push.token) == ("cancelled", "")
