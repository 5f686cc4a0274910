"""The dashboard: recent runs of the user's teams, expert bytes saved (a sum in the database
over succeeded runs) and the queue."""

from __future__ import annotations

import pytest
from django.urls import reverse

from mergehub.ui.formatting import human_bytes
from tests.ui.test_pagination import GiB, make_runs

pytestmark = pytest.mark.django_db


def test_dashboard_shows_recent_runs_bytes_saved_and_queue(alice_client, succeeded_run, queued_run):
    response = alice_client.get(reverse("dashboard:dashboard"))
    html = response.content.decode()
    assert succeeded_run.name in html and queued_run.name in html
    saved = response.context["stats"]["bytes_saved_total"]
    assert saved == succeeded_run.bytes_saved and saved > 0
    assert response.context["stats"]["queue"] == {"queued": 1, "running": 0}
    assert 'id="bytes-saved"' in html



def test_dashboard_total_is_the_sum_of_succeeded_runs(alice_client, alice, mallory, acme, rival):
    make_runs(acme, [alice], 4, saved=3 * GiB)
    make_runs(acme, [alice], 2, start=10, saved=None)  # succeeded before the column was filled
    make_runs(acme, [alice], 2, start=20, status="failed", saved=7 * GiB)  # not a saving
    make_runs(acme, [alice], 1, start=30, status="queued")
    make_runs(rival, [mallory], 5, start=40, saved=11 * GiB)  # another team's
    response = alice_client.get(reverse("dashboard:dashboard"))
    stats = response.context["stats"]
    assert stats["bytes_saved_total"] == 12 * GiB
    assert stats["queue"] == {"queued": 1, "running": 0}
    assert [run.name for run in stats["recent_runs"]][:2] == ["run 30", "run 21"]
    assert f'id="bytes-saved">{human_bytes(12 * GiB)}<' in response.content.decode()



def test_dashboard_recent_runs_merge_the_users_teams(alice_client, alice, mallory, acme, rival):
    from mergehub.accounts.models import Membership

    Membership.objects.create(user=alice, team=rival, role="viewer")
    make_runs(rival, [mallory], 5, start=0)
    make_runs(acme, [alice], 12, start=100)
    make_runs(rival, [mallory], 3, start=200)
    recent = alice_client.get(reverse("dashboard:dashboard")).context["stats"]["recent_runs"]
    assert [run.name for run in recent] == ["run 202", "run 201", "run 200", *(f"run {i}" for i in range(111, 104, -1))]
