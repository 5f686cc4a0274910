"""The Django admin lists reviews and the conversation, searchable, and edits neither (a change
goes through the review form, which records it in the audit log)."""

from django.urls import reverse

from mergehub.reviews import services


def test_changelists_list_and_search(admin_client, carols_run, carol, dave):
    services.request_review(run=carols_run, user=carol, body="needle in the comment")
    entries = reverse("admin:reviews_entry_changelist")
    # the search reaches the comment's body, which the list does not show: count the rows found
    assert admin_client.get(entries, {"q": "nothing like it"}).context["cl"].result_count == 0
    found = admin_client.get(entries, {"q": "needle"})
    assert found.context["cl"].result_count == 1 and "carol" in found.content.decode()
    reviews = admin_client.get(reverse("admin:reviews_review_changelist"), {"state": "requested"}).content.decode()
    assert f"run #{carols_run.pk}: Review requested" in reviews


def test_change_form_is_read_only(admin_client, carols_run, carol):
    entry = services.add_comment(run=carols_run, user=carol, body="original")
    url = reverse("admin:reviews_entry_change", args=[entry.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="body"' not in page and "original" in page
    admin_client.post(url, {"body": "rewritten", "kind": "approved"})
    entry.refresh_from_db()
    assert (entry.body, entry.kind) == ("original", "comment")
