import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import outputs_dir, run_output_dir
from mergehub.runs import services
from mergehub.runs.models import MergeRun
from mergehub.runs.runner import MergeRunner
from mergehub.runs.selectors import dashboard_stats, get_run, runs_for

Status = MergeRun.Status


def _experts(fam, weights=(1.0, 0.5)):
    return [(e, {"weight": w, "density": 0.5}) for e, w in zip(fam["experts"], weights)]


def _create(fam, user, team, run_on_commit=None, **kw):
    args = dict(user=user, team=team, name="", method="ties", base=fam["base"], experts=_experts(fam),
                parameters={}, budget="0.5", seed=3, dtype=None, out_dtype=None)
    args.update(kw)
    if run_on_commit is None:
        return services.create_run(**args)
    with run_on_commit():
        run = services.create_run(**args)
    run.refresh_from_db()
    return run


# --- config -----------------------------------------------------------------------------------

def test_build_config_is_a_mergekit_mapping(registered_family):
    fam = registered_family
    config = services.build_config(method="ties", base=fam["base"], experts=_experts(fam),
                                   parameters={"normalize": True, "lambda": None}, dtype="float32",
                                   out_dtype=None)
    assert config["merge_method"] == "ties" and config["base_model"] == fam["base"].path
    assert config["models"] == [{"model": e.path, "parameters": {"weight": w, "density": 0.5}}
                                for e, w in zip(fam["experts"], (1.0, 0.5))]
    assert config["parameters"] == {"normalize": True}  # unset values are dropped
    assert config["dtype"] == "float32" and "out_dtype" not in config
    assert config["checkpoint_ids"] == {c.path: c.pk for c in [fam["base"], *fam["experts"]]}
    assert "checkpoint_ids" not in services.engine_mapping(config)


# --- preview ----------------------------------------------------------------------------------

def test_preview_plan_respects_the_budget(registered_family, alice, acme):
    fam = registered_family
    full = services.preview_plan(user=alice, team=acme, method="ties", base=fam["base"], experts=_experts(fam),
                                 parameters={}, budget="1.0")
    half = services.preview_plan(user=alice, team=acme, method="ties", base=fam["base"], experts=_experts(fam),
                                 parameters={}, budget="0.5")
    assert full["planned_expert_bytes"] == full["nonzero_expert_bytes"] <= full["full_expert_bytes"]
    assert half["planned_expert_bytes"] <= half["budget_bytes"] == full["full_expert_bytes"] // 2
    assert half["planned_expert_bytes"] < full["planned_expert_bytes"]
    assert len(half["per_expert"]) == 2 and half["plan_digest"] != full["plan_digest"]


def test_viewer_may_preview_but_other_team_may_not(registered_family, bob, mallory, acme):
    fam = registered_family
    assert services.preview_plan(user=bob, team=acme, method="ties", base=fam["base"], experts=_experts(fam),
                                 budget="0.5")["blocks_total"] > 0
    with pytest.raises(PermissionDenied):
        services.preview_plan(user=mallory, team=acme, method="ties", base=fam["base"],
                              experts=_experts(fam), budget="0.5")


# --- bad input: a form error, nothing queued -------------------------------------------------

def _rejected(django_capture_on_commit_callbacks, field, **kw):
    with django_capture_on_commit_callbacks() as callbacks:
        with pytest.raises(ValidationError) as exc:
            _create(**kw)
    assert callbacks == [] and not MergeRun.objects.exists()
    assert field in exc.value.message_dict, exc.value.message_dict
    return " ".join(exc.value.message_dict[field])


@pytest.mark.parametrize("budget", ["0", "-0.5", "0MB", "", "lots"])
def test_bad_budget(registered_family, alice, acme, budget, django_capture_on_commit_callbacks):
    _rejected(django_capture_on_commit_callbacks, "budget", fam=registered_family, user=alice, team=acme,
              budget=budget)


@pytest.mark.parametrize("params,global_params", [
    ({"weight": 1.0, "density": 1.5}, {}),  # density > 1
    ({"weight": "heavy"}, {}),  # not a number
    ({"weight": 1.0, "colour": 3}, {}),  # unknown parameter
    ({"weight": 1.0}, {"normalize": "maybe"}),
])
def test_invalid_parameters(registered_family, alice, acme, params, global_params,
                            django_capture_on_commit_callbacks):
    fam = registered_family
    _rejected(django_capture_on_commit_callbacks, "parameters", fam=fam, user=alice, team=acme,
              experts=[(e, params) for e in fam["experts"]], parameters=global_params)


def test_unknown_method(registered_family, alice, acme, django_capture_on_commit_callbacks):
    msg = _rejected(django_capture_on_commit_callbacks, "parameters", fam=registered_family, user=alice,
                    team=acme, method="alchemy")
    assert "unknown merge_method" in msg


def test_unindexed_expert(registered_family, alice, acme, django_capture_on_commit_callbacks):
    fam = registered_family
    Checkpoint.objects.filter(pk=fam["experts"][1].pk).update(index_status=Checkpoint.IndexStatus.PENDING)
    fam["experts"][1].refresh_from_db()
    msg = _rejected(django_capture_on_commit_callbacks, "experts", fam=fam, user=alice, team=acme)
    assert "not indexed yet" in msg


def test_no_experts_and_duplicates(registered_family, alice, acme, django_capture_on_commit_callbacks):
    fam = registered_family
    _rejected(django_capture_on_commit_callbacks, "experts", fam=fam, user=alice, team=acme, experts=[])
    e = fam["experts"][0]
    _rejected(django_capture_on_commit_callbacks, "experts", fam=fam, user=alice, team=acme,
              experts=[(e, {"weight": 1}), (e, {"weight": 1})])


def test_base_must_be_a_base(registered_family, alice, acme, django_capture_on_commit_callbacks):
    fam = registered_family
    _rejected(django_capture_on_commit_callbacks, "base", fam=fam, user=alice, team=acme, base=fam["experts"][0])


@pytest.mark.parametrize("seed", [-1, 2**64, "abc"])
def test_bad_seed(registered_family, alice, acme, seed, django_capture_on_commit_callbacks):
    _rejected(django_capture_on_commit_callbacks, "seed", fam=registered_family, user=alice, team=acme, seed=seed)


# --- permissions ------------------------------------------------------------------------------

def test_viewer_cannot_start(registered_family, bob, acme):
    with pytest.raises(PermissionDenied):
        _create(registered_family, bob, acme)
    assert not MergeRun.objects.exists()


def test_other_team_cannot_use_acme_checkpoints(registered_family, mallory, rival):
    with pytest.raises(Http404):
        _create(registered_family, mallory, rival)
    assert not MergeRun.objects.exists()


# --- the happy path (django-q2 in sync mode) --------------------------------------------------

def test_create_run_queues_and_succeeds(registered_family, alice, acme, run_on_commit):
    fam = registered_family
    run = _create(fam, alice, acme, run_on_commit, measure_deviation=True)
    assert run.status == Status.SUCCEEDED, run.error
    assert run.name == "ties: 2 experts at budget 0.5"
    assert run.progress == 1.0 and run.stage == "done" and run.attempts == 1 and run.queue == "cpu"
    assert run.started_at <= run.finished_at and run.heartbeat_at is not None
    assert run.output_path == str(run_output_dir(run))
    out = run_output_dir(run)
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    m = run.metrics
    assert m["planned_expert_bytes"] <= m["budget_bytes"] < m["full_expert_bytes"]
    assert m["deviation"] is not None and m["deviation"]["update_relative"] >= 0
    assert run.plan["plan_digest"] and run.manifest
    assert set(run.experts.all()) == set(fam["experts"]) and run.base == fam["base"]
    msgs = [line["msg"] for line in run.log]
    assert msgs[0].startswith("queued by alice") and any(m.startswith("started on") for m in msgs)
    assert any(m.startswith("succeeded: read") for m in msgs)
    assert not list(outputs_dir(acme).glob(".run-*"))  # no staging left behind


def test_member_can_start(registered_family, carol, acme, run_on_commit):
    assert _create(registered_family, carol, acme, run_on_commit).status == Status.SUCCEEDED


# --- cancel -----------------------------------------------------------------------------------

def test_cancel_a_queued_run(registered_family, alice, acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        run = _create(registered_family, alice, acme)
    run = services.cancel_run(run=run, user=alice)
    assert run.status == Status.CANCELLED and run.finished_at
    for callback in callbacks:  # the job starts late: it must leave the run alone
        callback()
    run.refresh_from_db()
    assert run.status == Status.CANCELLED and not run_output_dir(run).exists()
    with pytest.raises(ValidationError, match="nothing to cancel"):
        services.cancel_run(run=run, user=alice)


def test_cancel_a_running_run_stops_at_the_next_block(registered_family, alice, acme, monkeypatch,
                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        run = _create(registered_family, alice, acme, budget="1.0")
    monkeypatch.setattr(MergeRunner, "cancel_interval", 0.0)
    original = MergeRunner.on_progress

    def cancel_once_merging(self, p):
        original(self, p)
        if p.done > 0 and not self._cancel:
            services.cancel_run(run=MergeRun.objects.get(pk=run.pk), user=alice)

    monkeypatch.setattr(MergeRunner, "on_progress", cancel_once_merging)
    for callback in callbacks:
        callback()
    run.refresh_from_db()
    assert run.status == Status.CANCELLED, (run.status, run.error)
    assert run.cancel_requested and run.progress < 1.0
    assert not run_output_dir(run).exists() and not list(outputs_dir(acme).glob(".run-*"))
    msgs = [line["msg"] for line in run.log]
    assert any("cancel requested by alice" in m for m in msgs)
    assert msgs[-1] == "cancelled at the next block; nothing was published"


def test_viewer_and_outsider_cannot_cancel(registered_family, alice, bob, mallory, acme,
                                           django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        run = _create(registered_family, alice, acme)
    with pytest.raises(PermissionDenied):
        services.cancel_run(run=run, user=bob)
    with pytest.raises(PermissionDenied):
        services.cancel_run(run=run, user=mallory)
    run.refresh_from_db()
    assert run.status == Status.QUEUED and not run.cancel_requested


# --- retry ------------------------------------------------------------------------------------

def test_retry_creates_a_new_run_from_the_same_config(registered_family, alice, bob, acme, run_on_commit):
    run = _create(registered_family, alice, acme, run_on_commit)
    MergeRun.objects.filter(pk=run.pk).update(status=Status.FAILED, error="disk on fire")
    run.refresh_from_db()
    with pytest.raises(PermissionDenied):
        services.retry_run(run=run, user=bob)
    with run_on_commit():
        again = services.retry_run(run=run, user=alice)
    again.refresh_from_db()
    assert again.pk != run.pk and again.retry_of == run
    assert again.config == run.config and again.budget == run.budget and again.seed == run.seed
    assert again.status == Status.SUCCEEDED, again.error
    assert again.plan["plan_digest"] == run.plan["plan_digest"]
    assert set(again.experts.all()) == set(run.experts.all())


def test_retry_refuses_active_runs(registered_family, alice, acme, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        run = _create(registered_family, alice, acme)
    with pytest.raises(ValidationError, match="still queued"):
        services.retry_run(run=run, user=alice)


# --- selectors --------------------------------------------------------------------------------

def test_run_selectors_are_scoped_and_filter(registered_family, alice, carol, bob, mallory, acme, run_on_commit):
    first = _create(registered_family, alice, acme, run_on_commit)
    second = _create(registered_family, carol, acme, run_on_commit, method="task_arithmetic",
                     experts=[(e, {"weight": 0.5}) for e in registered_family["experts"]])
    assert second.status == Status.SUCCEEDED, second.error
    assert list(runs_for(user=bob)) == [second, first]
    assert list(runs_for(user=bob, method="ties")) == [first]
    assert list(runs_for(user=bob, author=carol)) == [second]
    assert list(runs_for(user=bob, author="alice")) == [first]
    assert list(runs_for(user=bob, author=str(carol.pk))) == [second]
    assert list(runs_for(user=bob, status="failed")) == []
    assert list(runs_for(user=mallory)) == [] and list(runs_for(user=mallory, team=acme)) == []
    assert get_run(user=bob, pk=first.pk) == first
    with pytest.raises(Http404):
        get_run(user=mallory, pk=first.pk)


def test_dashboard_stats(registered_family, alice, mallory, acme, run_on_commit,
                         django_capture_on_commit_callbacks):
    done = _create(registered_family, alice, acme, run_on_commit)
    with django_capture_on_commit_callbacks():
        _create(registered_family, alice, acme)  # stays queued
    stats = dashboard_stats(user=alice)
    m = done.metrics  # the sketches read count as spent, like the exact blocks
    saved = m["full_expert_bytes"] - m["expert_bytes_requested"] - m["sketch_bytes_requested"]
    assert saved > 0 and stats["bytes_saved_total"] == saved
    assert stats["queue"] == {"queued": 1, "running": 0}
    assert len(stats["recent_runs"]) == 2
    assert dashboard_stats(user=mallory) == {"recent_runs": [], "bytes_saved_total": 0,
                                             "queue": {"queued": 0, "running": 0}}


def test_a_run_wakes_its_queue_with_the_configured_timeout(registered_family, alice, acme, settings,
                                                           monkeypatch, run_on_commit):
    from mergehub.jobs import dispatch

    settings.MERGEHUB_JOB_TIMEOUT = 77
    calls = []
    monkeypatch.setattr(dispatch, "async_task", lambda func, *a, **kw: calls.append((func, a, kw)) or "tid-1")
    run = _create(registered_family, alice, acme, run_on_commit)
    assert calls == [("jobs.tasks.run_next_job", ("cpu", "merge", run.pk),
                      {"cluster": "mergehub-cpu", "task_name": "wake-cpu", "timeout": 77})]
    assert run.status == Status.QUEUED and run.queue == "cpu"


def test_a_run_is_queued_even_when_the_broker_is_down(registered_family, alice, acme, monkeypatch, run_on_commit):
    """The row is the job: a broker outage at submission loses nothing (the watchdog wakes it)."""
    from mergehub.jobs import dispatch

    def broker_down(*a, **kw):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(dispatch, "async_task", broker_down)
    run = _create(registered_family, alice, acme, run_on_commit)
    assert run.status == Status.QUEUED


def test_unknown_queues_are_refused(registered_family, alice, acme):
    with pytest.raises(ValidationError) as err:
        _create(registered_family, alice, acme, queue="gpu")
    assert "No 'gpu' queue here" in str(err.value.message_dict["queue"])
    assert not MergeRun.objects.exists()


# --- tags and a note --------------------------------------------------------------------------

def test_tags_are_normalised():
    assert services.normalise_tags(" Nightly, llama-3 ,,nightly\nA  B ") == "nightly,llama-3,a b"
    assert services.normalise_tags(["X", " x ", "y"]) == "x,y"
    assert services.normalise_tags("") == services.normalise_tags(None) == ""
    with pytest.raises(ValidationError) as exc:
        services.normalise_tags("a" * 41)
    assert "at most 40 characters" in " ".join(exc.value.message_dict["tags"])
    with pytest.raises(ValidationError, match="at most 10 tags"):
        services.normalise_tags(",".join(f"t{i}" for i in range(11)))
    assert len(services.normalise_tags([f"{i:02d}" + "x" * 38 for i in range(10)])) <= MergeRun._meta.get_field(
        "tags").max_length


def test_a_note_is_plain_text():
    assert services.normalise_note("  a\r\nb\rc\x00  ") == "a\nb\nc"
    assert services.normalise_note("<script>x</script>") == "<script>x</script>"  # stored as typed, shown escaped
    with pytest.raises(ValidationError, match="at most 5000 characters"):
        services.normalise_note("x" * 5001)


def test_members_set_tags_and_notes_viewers_do_not(registered_family, alice, bob, carol, mallory, acme):
    run = _create(registered_family, alice, acme)
    run = services.set_run_notes(run=run, user=carol, tags="Nightly, ties", note="first try")
    assert (run.tags, run.note, run.tag_list) == ("nightly,ties", "first try", ["nightly", "ties"])
    for user in (bob, mallory):
        with pytest.raises(PermissionDenied):
            services.set_run_notes(run=run, user=user, tags="x", note="y")
    run.refresh_from_db()
    assert (run.tags, run.note) == ("nightly,ties", "first try")


def test_setting_notes_writes_only_those_columns(registered_family, alice, acme):
    run = _create(registered_family, alice, acme)
    stale = MergeRun.objects.get(pk=run.pk)
    MergeRun.objects.filter(pk=run.pk).update(progress=0.5, stage="reading")  # the worker, meanwhile
    services.set_run_notes(run=stale, user=alice, tags="a", note="b")
    run.refresh_from_db()
    assert (run.progress, run.stage, run.tags, run.note) == (0.5, "reading", "a", "b")
