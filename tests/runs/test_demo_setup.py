from io import StringIO

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import RequestFactory

from mergehub.accounts.models import Membership
from mergehub.registry.models import Checkpoint, Family


def _demo(tmp_path, **kw):
    out = StringIO()
    call_command("demo_setup", "--size", "2MB", "--experts", "2", "--dir", str(tmp_path / "demo"),
                 "--password", kw.get("password", "demo-pass-1"), stdout=out)
    return out.getvalue()


def _authenticate(username, password):
    """Log in the way the login page does: with the request, which the throttle (axes) needs."""
    return authenticate(RequestFactory().post("/login/"), username=username, password=password)


def test_demo_setup_creates_an_indexed_family_and_is_idempotent(db, tmp_path):
    out = _demo(tmp_path)
    assert "log in as admin / demo-pass-1" in out
    admin = _authenticate("admin", "demo-pass-1")
    assert admin is not None and admin.is_superuser and admin.is_staff
    assert Membership.objects.get(user=admin, team__slug="demo").role == "admin"
    family = Family.objects.get(name="demo")
    assert family.base.name == "demo-base"
    experts = Checkpoint.objects.filter(role="expert", family=family)
    assert experts.count() == 2 and all(e.index_status == "ready" for e in experts)

    out = _demo(tmp_path, password="demo-pass-2")  # again: nothing duplicated
    assert "Kept the demo family" in out and "Expert demo-expert-1 is ready" in out
    assert "Registering" not in out and "Indexing" not in out
    assert Checkpoint.objects.count() == 3 and Family.objects.count() == 1
    assert _authenticate("admin", "demo-pass-2") is not None


def test_demo_setup_refuses_a_directory_outside_the_roots(db, tmp_path_factory):
    with pytest.raises(CommandError, match="outside the Demo team's checkpoint roots"):
        call_command("demo_setup", "--dir", str(tmp_path_factory.mktemp("elsewhere") / "demo"), stdout=StringIO())


def test_demo_setup_queues_the_trained_family_and_registers_its_tasks_without_waiting(db, tmp_path):
    from mergehub.evaluation.models import EvalTask, FamilyJob

    out = _demo(tmp_path)
    job = FamilyJob.objects.get()
    assert job.status == "queued" and job.family_name == "tiny-llama" and job.team.slug == "demo"
    assert f"Queued training #{job.pk}" in out
    assert sorted(EvalTask.objects.values_list("name", flat=True)) == ["caesar", "reverse", "sort", "swap"]
    out = _demo(tmp_path)  # again: the queued training is not queued twice, the tasks not duplicated
    assert "already queued" in out
    assert FamilyJob.objects.count() == 1 and EvalTask.objects.count() == 4
