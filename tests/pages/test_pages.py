"""Every page renders for a team member and shows what it should; anonymous users are sent to login."""

from __future__ import annotations

import os
import re

import pytest
from django.urls import reverse
from django.utils.html import escape

from mergehub.runs.models import MergeRun
from tests.conftest import PASSWORD

pytestmark = pytest.mark.django_db

PAGES = [
    ("dashboard:dashboard", {}), ("registry:list", {}), ("registry:register", {}),
    ("registry:detail", {"pk": 1}), ("registry:status", {"pk": 1}), ("runs:list", {}), ("runs:new", {}),
    ("runs:operator_fields", {}), ("runs:detail", {"pk": 1}), ("runs:live", {"pk": 1}),
    ("accounts:team", {"slug": "acme"}),
]
ACTIONS = [("registry:reindex", {"pk": 1}), ("registry:cancel_index", {"pk": 1, "job_pk": 1}),
           ("registry:retry_index", {"pk": 1, "job_pk": 1}), ("runs:preview", {}), ("runs:cancel", {"pk": 1}),
           ("runs:retry", {"pk": 1}), ("accounts:switch_team", {})]


@pytest.mark.parametrize("name,kwargs", PAGES + ACTIONS)
def test_every_page_and_action_requires_login(client, name, kwargs):
    url = reverse(name, kwargs=kwargs)
    response = client.post(url) if (name, kwargs) in ACTIONS else client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_login_page_and_login(client, alice):
    page = client.get(reverse("login"))
    assert page.status_code == 200 and b'name="password"' in page.content
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302
    assert client.get(reverse("dashboard:dashboard")).status_code == 200


def test_wrong_password_is_a_form_error(client, alice):
    response = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert b"form-errors" in response.content
    assert "_auth_user_id" not in client.session


def test_logout_is_a_post(alice_client):
    assert alice_client.post(reverse("logout")).status_code == 302
    assert alice_client.get(reverse("dashboard:dashboard")).status_code == 302


def test_pages_load_static_assets_not_a_cdn(alice_client, succeeded_run):
    html = alice_client.get(reverse("runs:detail", args=[succeeded_run.pk])).content.decode()
    scripts = re.findall(r'<script[^>]*src="([^"]+)"', html)
    assert any("vendor/htmx-2.0.11.min.js" in s for s in scripts)
    assert any("vendor/plotly-4.1.1.min.js" in s for s in scripts)
    assert all(s.startswith("/static/") for s in scripts), scripts


def test_checkpoint_list_shows_the_family(alice_client, registered_family):
    html = alice_client.get(reverse("registry:list")).content.decode()
    for ckpt in [registered_family["base"], *registered_family["experts"]]:
        assert reverse("registry:detail", args=[ckpt.pk]) in html
    assert "tiny-llama" in html


def test_expert_detail_has_the_delta_norm_chart(alice_client, registered_family):
    expert = registered_family["experts"][0]
    response = alice_client.get(reverse("registry:detail", args=[expert.pk]))
    html = response.content.decode()
    assert 'data-figure="chart-delta-norms-data"' in html
    chart = response.context["chart"]
    assert list(chart.figure.data[0].x)[:2] == ["embed_tokens", "layer 0"]
    assert all(n >= 0 for n in chart.figure.data[0].y) and max(chart.figure.data[0].y) > 0
    assert "vendor/plotly-4.1.1.min.js" in html


def test_base_detail_has_no_chart(alice_client, registered_family):
    response = alice_client.get(reverse("registry:detail", args=[registered_family["base"].pk]))
    assert response.status_code == 200 and response.context["chart"] is None


def test_index_status_poll_shows_progress_then_reloads_the_page(alice, alice_client, registered_family,
                                                               django_capture_on_commit_callbacks):
    from mergehub.registry.models import IndexJob
    from mergehub.registry.services import reindex_checkpoint

    expert = registered_family["experts"][0]
    response = alice_client.get(reverse("registry:status", args=[expert.pk]))
    assert response.status_code == 204 and response["HX-Refresh"] == "true"
    with django_capture_on_commit_callbacks():  # queued, not run
        reindex_checkpoint(checkpoint=expert, user=alice)
    job = expert.index_jobs.first()
    IndexJob.objects.filter(pk=job.pk).update(status="running", stage="index", progress=0.4)
    response = alice_client.get(reverse("registry:status", args=[expert.pk]))
    html = response.content.decode()
    assert response.status_code == 200 and 'hx-trigger="every 1s"' in html
    assert 'id="index-status"' not in html and 'id="index-job-live"' in html and "40%" in html


def test_a_failed_index_job_can_be_retried_from_the_checkpoint_page(alice, alice_client, registered_family,
                                                                   run_on_commit, monkeypatch):
    from mergehub.registry import services as registry_services
    from mergehub.registry.models import IndexJob

    expert = registered_family["experts"][0]

    def broken(checkpoint, **kwargs):
        raise registry_services.ValidationError("the disk is on fire")

    with monkeypatch.context() as m, run_on_commit():
        m.setattr(registry_services, "index_expert", broken)
        alice_client.post(reverse("registry:reindex", args=[expert.pk]))
    failed = expert.index_jobs.first()
    assert failed.status == IndexJob.Status.FAILED and "the disk is on fire" in failed.error
    page = alice_client.get(reverse("registry:detail", args=[expert.pk])).content.decode()
    assert "Retry indexing" in page and "the disk is on fire" in page
    with run_on_commit():
        response = alice_client.post(reverse("registry:retry_index", args=[expert.pk, failed.pk]))
    assert response.status_code == 302
    retried = expert.index_jobs.first()
    assert retried.retry_of == failed and retried.status == IndexJob.Status.SUCCEEDED
    expert.refresh_from_db()
    assert expert.index_status == "ready" and expert.index_error == ""


def test_a_queued_index_job_can_be_cancelled(alice, alice_client, registered_family,
                                             django_capture_on_commit_callbacks):
    from mergehub.registry.models import IndexJob
    from mergehub.registry.services import reindex_checkpoint

    expert = registered_family["experts"][0]
    with django_capture_on_commit_callbacks():
        reindex_checkpoint(checkpoint=expert, user=alice)
    job = expert.index_jobs.first()
    assert "Cancel indexing" in alice_client.get(reverse("registry:detail", args=[expert.pk])).content.decode()
    alice_client.post(reverse("registry:cancel_index", args=[expert.pk, job.pk]))
    job.refresh_from_db()
    expert.refresh_from_db()
    assert job.status == IndexJob.Status.CANCELLED and expert.index_status == "failed"
    assert "cancelled" in expert.index_error


def test_register_a_base_and_an_expert(alice_client, family, run_on_commit):
    response = alice_client.post(reverse("registry:register"), {
        "name": "my-base", "role": "base", "family_name": "fam", "source": "local",
        "local_path": str(family["base"])})
    assert response.status_code == 302
    with run_on_commit():
        response = alice_client.post(reverse("registry:register"), {
            "name": "my-expert", "role": "expert", "family_name": "fam", "source": "local",
            "local_path": str(family["experts"][0])})
    assert response.status_code == 302
    page = alice_client.get(response["Location"])
    assert page.context["checkpoint"].index_status == "ready"
    # the chart shows the new expert's delta norms, layer by layer, as measured from its files
    figure = page.context["chart"].figure
    assert 'data-figure="chart-delta-norms-data"' in page.content.decode()
    assert (figure.layout.xaxis.title.text, figure.layout.yaxis.title.text) == ("layer", "‖δ‖₂")
    bar = figure.data[0]
    labels, norms = list(bar.x), dict(zip(bar.x, bar.y))
    assert labels[:3] == ["embed_tokens", "layer 0", "layer 1"]
    assert set(labels[3:]) == {"lm_head", "norm"}
    for layer, norm in _delta_norms_by_layer(family["base"], family["experts"][0]).items():
        assert norms[f"layer {layer}"] == pytest.approx(norm, rel=1e-4)
    assert norms["norm"] >= 0 and norms["embed_tokens"] > 0


def _delta_norms_by_layer(base_dir, expert_dir) -> dict[int, float]:
    """sqrt(Σ ‖expert − base‖²) over each layer's tensors, straight from the safetensors files."""
    from safetensors.torch import load_file

    from mergehub.engine.api import layer_index

    base, expert = load_file(base_dir / "model.safetensors"), load_file(expert_dir / "model.safetensors")
    squares: dict[int, float] = {}
    for name, tensor in expert.items():
        layer = layer_index(name)
        if layer is not None:
            delta = tensor.double() - base[name].double()
            squares[layer] = squares.get(layer, 0.0) + float((delta * delta).sum())
    return {layer: sq ** 0.5 for layer, sq in squares.items()}


def test_reindex_queues_a_fresh_index(alice_client, registered_family, run_on_commit):
    expert = registered_family["experts"][0]
    with run_on_commit():
        response = alice_client.post(reverse("registry:reindex", args=[expert.pk]))
    assert response.status_code == 302
    expert.refresh_from_db()
    assert expert.index_status == "ready" and expert.index_stats["tensors"]


def test_merge_form_shows_the_operators_parameters(alice_client, registered_family):
    from mergehub.engine.api import get_operator

    response = alice_client.get(reverse("runs:new"))
    html = response.content.decode()
    ties = get_operator("ties")
    for p in ties.params:
        if p.scope == "global":
            assert f'name="param__{p.name}"' in html
        else:
            for expert in registered_family["experts"]:
                assert f'name="expert_{expert.pk}__{p.name}"' in html
        assert escape(p.help) in html
    # defaults are pre-filled: ties normalizes by default, lambda is 1.0
    assert re.search(r'name="param__normalize"[^>]*checked', html)
    assert re.search(r'name="param__lambda"[^>]*value="1.0"', html)


def test_switching_operator_shows_exactly_its_parameters(alice_client, registered_family):
    e1 = registered_family["experts"][0]
    base = registered_family["base"]
    response = alice_client.get(reverse("runs:operator_fields"), {
        "method": "slerp", "base": base.pk, f"expert_{e1.pk}__use": "on", "budget": "0.5"})
    html = response.content.decode()
    assert response["HX-Trigger"] == "fields-swapped"
    assert 'name="param__t"' in html
    assert "density" not in html and "param__lambda" not in html
    # choices survive the swap: slerp takes one expert, a radio button
    assert re.search(rf'type="radio" name="expert" value="{e1.pk}"[^>]*checked', html)
    dare = alice_client.get(reverse("runs:operator_fields"), {"method": "breadcrumbs", "base": base.pk})
    assert f'name="expert_{e1.pk}__gamma"'.encode() in dare.content


def test_plan_preview_shows_bytes_savings_blocks_and_certificate(alice_client, registered_family):
    from tests.pages.conftest import merge_post

    response = alice_client.post(reverse("runs:preview"), merge_post(registered_family))
    plan = response.context["plan"]
    assert plan["planned_expert_bytes"] <= 0.5 * plan["full_expert_bytes"]
    html = response.content.decode()
    assert "Planned expert reads" in html and "Blocks chosen" in html and "Certificate" in html
    assert f'{plan["blocks_planned"]} / {plan["blocks_total"]}' in html
    assert [e["name"] for e in plan["per_expert"]] == ["expert-1", "expert-2"]
    # ties elects signs across the two experts: no fixed coefficients, so no certificate
    assert plan["certificate"] is None and "none for this operator" in html
    assert MergeRun.objects.count() == 0


def test_plan_preview_reads_no_weights(alice_client, registered_family):
    """The preview is computed from the index: overwriting every expert weight byte (the
    safetensors header, size and mtime stay) changes nothing in the plan."""
    from pathlib import Path

    from tests.pages.conftest import merge_post

    before = alice_client.post(reverse("runs:preview"), merge_post(registered_family)).context["plan"]
    for expert in registered_family["experts"]:
        weights = Path(expert.path) / "model.safetensors"
        stat = weights.stat()
        with weights.open("r+b") as f:  # in place, same size: the catalog's stat fingerprint holds
            header_end = 8 + int.from_bytes(f.read(8), "little")
            f.seek(header_end)
            f.write(b"\xff" * (stat.st_size - header_end))
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    response = alice_client.post(reverse("runs:preview"), merge_post(registered_family))
    assert response.context["problems"] == []
    assert response.context["plan"] == before


def test_plan_preview_grows_with_the_budget(alice_client, registered_family):
    from tests.pages.conftest import merge_post

    small = alice_client.post(reverse("runs:preview"), merge_post(registered_family, budget="0.1")).context["plan"]
    full = alice_client.post(reverse("runs:preview"), merge_post(registered_family, budget="1.0")).context["plan"]
    assert small["planned_expert_bytes"] < full["planned_expert_bytes"]
    assert full["planned_expert_bytes"] == full["nonzero_expert_bytes"]


def test_plan_preview_warns_when_the_budget_plans_nothing(alice_client, registered_family):
    from tests.pages.conftest import merge_post

    nothing = alice_client.post(reverse("runs:preview"), merge_post(registered_family, budget="1B"))
    plan, html = nothing.context["plan"], nothing.content.decode()
    assert plan["planned_expert_bytes"] == 0 < plan["nonzero_expert_bytes"]
    assert 'id="plan-base-only"' in html and "The output will equal the base." in html
    assert "plans no expert block and no sketch" in html
    some = alice_client.post(reverse("runs:preview"), merge_post(registered_family, budget="0.1"))
    assert some.context["plan"]["planned_expert_bytes"] > 0 and 'id="plan-base-only"' not in some.content.decode()


def test_pages_link_the_favicon_served_from_static(alice_client):
    from django.contrib.staticfiles import finders

    html = alice_client.get(reverse("dashboard:dashboard")).content.decode()
    link = re.search(r'<link rel="icon" href="([^"]+)" type="image/svg\+xml">', html)
    assert link and link.group(1).endswith("img/favicon.svg") and "://" not in link.group(1)
    svg = finders.find("img/favicon.svg")
    assert svg and open(svg).read().startswith("<svg")


def test_plan_preview_explains_what_is_missing(alice_client, registered_family):
    from tests.pages.conftest import merge_post

    e1 = registered_family["experts"][0]
    response = alice_client.post(reverse("runs:preview"),
                                 merge_post(registered_family, **{f"expert_{e1.pk}__weight": ""}))
    assert response.context["plan"] is None
    assert any("weight" in p for p in response.context["problems"])


def test_start_a_merge_and_read_its_report(alice_client, registered_family, run_on_commit):
    from tests.pages.conftest import merge_post

    with run_on_commit():
        response = alice_client.post(reverse("runs:new"), merge_post(registered_family, measure_deviation="on",
                                                                     name="web ties"))
    assert response.status_code == 302
    run = MergeRun.objects.get()
    assert response["Location"] == reverse("runs:detail", args=[run.pk])
    assert run.status == "succeeded", run.error
    assert run.config["merge_method"] == "ties" and run.budget == "0.5" and run.name == "web ties"
    assert [m["parameters"] for m in run.config["models"]] == [{"weight": 1.0, "density": 0.7},
                                                               {"weight": 0.5, "density": 0.7}]
    page = alice_client.get(response["Location"])
    html = page.content.decode()
    ids = [c.id for c in page.context["charts"]]
    expert_chart = page.context["charts"][0].figure
    assert list(expert_chart.data[0].x) == ["expert-1", "expert-2"]  # checkpoint names, not paths
    assert ids == ["chart-expert-bytes", "chart-io", "chart-savings", "chart-time", "chart-deviation"]
    for chart_id in ids:
        assert f'data-figure="{chart_id}-data"' in html
    assert "Expert bytes read from storage" in html and "bytes read" in html
    assert "relative to the update" in html and "relative to the weights" in html
    assert 'hx-trigger="every 1s"' not in html  # finished: no polling


def test_run_detail_while_running_polls_and_offers_cancel(alice_client, queued_run):
    html = alice_client.get(reverse("runs:detail", args=[queued_run.pk])).content.decode()
    assert 'hx-trigger="every 1s"' in html
    assert reverse("runs:cancel", args=[queued_run.pk]) in html
    assert reverse("runs:retry", args=[queued_run.pk]) not in html
    live = alice_client.get(reverse("runs:live", args=[queued_run.pk]))
    assert live.status_code == 200 and b'hx-trigger="every 1s"' in live.content
    assert b"queued by alice" in live.content


def test_live_partial_reloads_the_page_when_the_run_is_done(alice_client, succeeded_run):
    response = alice_client.get(reverse("runs:live", args=[succeeded_run.pk]))
    assert response.status_code == 204 and response["HX-Refresh"] == "true"


def test_cancel_a_queued_run(alice_client, queued_run):
    response = alice_client.post(reverse("runs:cancel", args=[queued_run.pk]))
    assert response.status_code == 302
    queued_run.refresh_from_db()
    assert queued_run.status == "cancelled"
    again = alice_client.post(reverse("runs:cancel", args=[queued_run.pk]), follow=True)
    assert b"nothing to cancel" in again.content


def test_retry_creates_a_new_run_from_the_same_config(alice_client, succeeded_run, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as queued:
        response = alice_client.post(reverse("runs:retry", args=[succeeded_run.pk]))
    new = MergeRun.objects.exclude(pk=succeeded_run.pk).get()
    assert response["Location"] == reverse("runs:detail", args=[new.pk])
    assert new.retry_of == succeeded_run and new.config == succeeded_run.config and len(queued) == 1


def test_run_list_filters_by_status_method_and_author(alice_client, carol, acme, registered_family,
                                                     succeeded_run, queued_run):
    from mergehub.runs.services import create_run
    from tests.pages.conftest import ties_inputs

    inputs = ties_inputs(registered_family)
    inputs["method"] = "task_arithmetic"
    carols = create_run(user=carol, team=acme, name="carol's", **inputs)

    def listed(**params):
        return {r.pk for r in alice_client.get(reverse("runs:list"), params).context["runs"]}

    assert listed() == {succeeded_run.pk, queued_run.pk, carols.pk}
    assert listed(status="succeeded") == {succeeded_run.pk}
    assert listed(status="queued") == {queued_run.pk, carols.pk}
    assert listed(method="task_arithmetic") == {carols.pk}
    assert listed(author="carol") == {carols.pk}
    assert listed(author="alice", status="queued") == {queued_run.pk}


def test_team_page_and_switch(alice_client, alice, rival, acme):
    from mergehub.accounts.models import Membership

    Membership.objects.create(user=alice, team=rival, role="viewer")
    page = alice_client.get(reverse("accounts:team", args=["acme"]))
    assert page.status_code == 200 and b"alice" in page.content
    assert alice_client.get(reverse("dashboard:dashboard")).context["team"] == acme  # first by name
    response = alice_client.post(reverse("accounts:switch_team"), {"team": "rival", "next": "/runs/"})
    assert response["Location"] == "/runs/"
    assert alice_client.get(reverse("runs:list")).context["team"] == rival
    evil = alice_client.post(reverse("accounts:switch_team"), {"team": "acme", "next": "https://evil.example/"})
    assert evil["Location"] == reverse("dashboard:dashboard")


def test_admin_adds_a_member(alice_client, acme, django_user_model):
    django_user_model.objects.create_user(username="dave", password=PASSWORD)
    response = alice_client.post(reverse("accounts:team", args=["acme"]), {"username": "dave", "role": "member"})
    assert response.status_code == 302
    assert acme.memberships.get(user__username="dave").role == "member"
    missing = alice_client.post(reverse("accounts:team", args=["acme"]), {"username": "nobody", "role": "member"})
    assert b"No user named" in missing.content


def test_the_merge_form_offers_the_queues_of_the_site(alice_client, registered_family, settings,
                                                     django_capture_on_commit_callbacks):
    from tests.pages.conftest import merge_post

    settings.MERGEHUB_QUEUES = ["cpu"]
    assert "Worker queue" not in alice_client.get(reverse("runs:new")).content.decode()
    settings.MERGEHUB_QUEUES = ["cpu", "gpu"]
    assert "Worker queue" in alice_client.get(reverse("runs:new")).content.decode()
    with django_capture_on_commit_callbacks():  # queued only: no GPU worker here
        response = alice_client.post(reverse("runs:new"), {**merge_post(registered_family), "queue": "gpu"})
    assert response.status_code == 302
    run = MergeRun.objects.get()
    assert run.queue == "gpu" and run.status == "queued"
    assert "gpu" in alice_client.get(reverse("runs:detail", args=[run.pk])).content.decode()
