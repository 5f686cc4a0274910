import shutil

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404

from mergehub.registry import hf
from mergehub.registry.models import Checkpoint, Family
from mergehub.registry.roots import hf_cache_dir
from mergehub.registry.selectors import checkpoints_for, delta_norms_by_layer, families_for, get_checkpoint
from mergehub.registry.services import register_checkpoint, reindex_checkpoint
from tests.fixtures.family import make_family, make_mismatched_expert
from tests.registry.hf_cache import fill_cache

Status = Checkpoint.IndexStatus


def _register(team, user, name, role, path, family_name="tiny-llama", **kw):
    return register_checkpoint(team=team, user=user, name=name, role=role, family_name=family_name,
                               local_path=str(path) if path is not None else None, **kw)


def _form_error(callbacks_fixture, fn, field):
    """Run ``fn``; it must raise a ValidationError on ``field`` and queue nothing."""
    with callbacks_fixture() as callbacks:
        with pytest.raises(ValidationError) as exc:
            fn()
    assert callbacks == [], "a rejected registration must not queue a job"
    assert field in exc.value.message_dict, exc.value.message_dict
    message = " ".join(exc.value.message_dict[field])
    assert "\n" not in message
    return message


# --- bases ------------------------------------------------------------------------------------

def test_base_creates_its_family_and_is_ready(alice, acme, family, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        base = _register(acme, alice, "base", "base", family["base"])
    assert callbacks == []  # a base needs no index of its own
    assert base.index_status == Status.READY and base.path == str(family["base"].resolve())
    fam = Family.objects.get(team=acme, name="tiny-llama")
    assert fam.base == base and base.family == fam
    assert fam.tensor_count == base.tensor_count == len(fam.signature) > 0
    assert fam.signature["model.embed_tokens.weight"] == ["BF16", [64, 16]]
    assert len(fam.signature_digest) == 64
    assert base.size_bytes > 0 and base.added_by == alice


def test_base_family_name_defaults_to_checkpoint_name(alice, acme, family):
    base = register_checkpoint(team=acme, user=alice, name="llama-base", role="base",
                               local_path=str(family["base"]))
    assert base.family.name == "llama-base"


def test_second_base_for_a_family_is_refused(alice, acme, registered_family, family,
                                             django_capture_on_commit_callbacks):
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "base2", "base", family["base"]), "family_name")
    assert "already has a base" in msg


# --- experts ----------------------------------------------------------------------------------

def test_expert_is_queued_and_indexed(registered_family):
    expert = registered_family["experts"][0]
    assert expert.index_status == Status.READY, expert.index_error
    stats = expert.index_stats
    assert set(stats["tensors"]) == set(expert.family.signature)
    assert expert.file_hashes == stats["file_hashes"] and "model.safetensors" in expert.file_hashes
    assert expert.indexed_at is not None
    # the final norm is identical to the base in the fixture family: zero delta
    assert stats["tensors"]["model.norm.weight"]["delta_norm"] == 0
    assert stats["tensors"]["model.layers.0.self_attn.q_proj.weight"]["delta_norm"] > 0
    # indexing an expert fills the base's file hashes
    registered_family["base"].refresh_from_db()
    assert "model.safetensors" in registered_family["base"].file_hashes


def test_expert_family_is_found_by_signature(alice, acme, family, run_on_commit):
    _register(acme, alice, "base", "base", family["base"])
    with run_on_commit():
        expert = _register(acme, alice, "e1", "expert", family["experts"][0], family_name=None)
    expert.refresh_from_db()
    assert expert.family.name == "tiny-llama" and expert.index_status == Status.READY


def test_expert_needs_a_registered_base(alice, acme, family, django_capture_on_commit_callbacks):
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "e1", "expert", family["experts"][0], family_name=None),
                      "family_name")
    assert "register its base first" in msg
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "e1", "expert", family["experts"][0], family_name="nope"),
                      "family_name")
    assert "No family named 'nope'" in msg
    assert not Checkpoint.objects.exists()


def test_mismatched_expert_is_a_form_error_listing_differences(alice, acme, family, tmp_path,
                                                               django_capture_on_commit_callbacks):
    _register(acme, alice, "base", "base", family["base"])
    odd = make_mismatched_expert(tmp_path)
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "odd", "expert", odd), "local_path")
    assert "model.embed_tokens.weight" in msg  # names a differing tensor
    assert not Checkpoint.objects.filter(name="odd").exists()


# --- bad local paths: each a form error, nothing queued -------------------------------------

def test_path_outside_roots(alice, acme, tmp_path_factory, django_capture_on_commit_callbacks):
    outside = make_family(tmp_path_factory.mktemp("outside"))["base"]
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "b", "base", outside), "local_path")
    assert "is not inside your team's checkpoint roots" in msg


def test_symlink_escape(alice, acme, tmp_path, tmp_path_factory, django_capture_on_commit_callbacks):
    outside = make_family(tmp_path_factory.mktemp("outside"))["base"]
    (tmp_path / "link").symlink_to(outside)
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "b", "base", tmp_path / "link"), "local_path")
    assert "is not inside your team's checkpoint roots" in msg and "outside" not in msg.split("roots")[-1]


def test_missing_directory(alice, acme, tmp_path, django_capture_on_commit_callbacks):
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "b", "base", tmp_path / "missing"), "local_path")
    assert "no such directory" in msg


def test_no_safetensors(alice, acme, tmp_path, django_capture_on_commit_callbacks):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "b", "base", empty), "local_path")
    assert "no safetensors" in msg


def test_pickle_only(alice, acme, tmp_path, django_capture_on_commit_callbacks):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "b", "base", pickled), "local_path")
    assert "pickle" in msg and "convert" in msg


def test_corrupt_safetensors(alice, acme, tmp_path, django_capture_on_commit_callbacks):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    _form_error(django_capture_on_commit_callbacks,
                lambda: _register(acme, alice, "b", "base", bad), "local_path")


@pytest.mark.parametrize("kwargs,field", [
    ({"name": ""}, "name"),
    ({"role": "teacher"}, "role"),
    ({"local_path": None}, "local_path"),  # neither source
    ({"hf_repo_id": "acme/x"}, "local_path"),  # both sources
])
def test_bad_fields(alice, acme, family, kwargs, field, django_capture_on_commit_callbacks):
    args = {"team": acme, "user": alice, "name": "b", "role": "base", "local_path": str(family["base"])}
    args.update(kwargs)
    _form_error(django_capture_on_commit_callbacks, lambda: register_checkpoint(**args), field)


def test_duplicate_name(alice, acme, registered_family, family, django_capture_on_commit_callbacks):
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: _register(acme, alice, "expert-1", "expert", family["experts"][1]), "name")
    assert "already has a checkpoint" in msg


# --- permissions and scoping -----------------------------------------------------------------

def test_viewer_cannot_register(bob, acme, family):
    with pytest.raises(PermissionDenied):
        _register(acme, bob, "b", "base", family["base"])
    assert not Checkpoint.objects.exists()


def test_member_can_register(carol, acme, family):
    assert _register(acme, carol, "b", "base", family["base"]).is_ready


def test_other_team_cannot_register_into_acme(mallory, acme, family):
    with pytest.raises(PermissionDenied):
        _register(acme, mallory, "b", "base", family["base"])


def test_selectors_scope_by_team(registered_family, alice, bob, mallory, acme, rival, tmp_path):
    base = registered_family["base"]
    assert checkpoints_for(user=alice).count() == 3
    assert checkpoints_for(user=bob, team=acme).count() == 3
    assert checkpoints_for(user=mallory).count() == 0
    assert checkpoints_for(user=mallory, team=acme).count() == 0  # passing the team is no bypass
    assert get_checkpoint(user=bob, pk=base.pk) == base
    with pytest.raises(Http404):
        get_checkpoint(user=mallory, pk=base.pk)
    with pytest.raises(Http404):
        get_checkpoint(user=alice, pk=999999)
    assert families_for(user=alice, team=acme).count() == 1
    assert families_for(user=mallory).count() == 0


def test_reindex(registered_family, alice, bob, mallory, run_on_commit):
    expert = registered_family["experts"][0]
    with pytest.raises(PermissionDenied):
        reindex_checkpoint(checkpoint=expert, user=bob)
    with pytest.raises(PermissionDenied):
        reindex_checkpoint(checkpoint=expert, user=mallory)
    Checkpoint.objects.filter(pk=expert.pk).update(index_status=Status.FAILED, index_error="boom")
    with run_on_commit():
        reindex_checkpoint(checkpoint=expert, user=alice)
    expert.refresh_from_db()
    assert expert.index_status == Status.READY and expert.index_error == ""


def test_index_job_failure_is_recorded(alice, acme, family, run_on_commit):
    _register(acme, alice, "base", "base", family["base"])
    with run_on_commit():
        expert = _register(acme, alice, "e1", "expert", family["experts"][0])
        # the files vanish before the worker gets to them
        shutil.rmtree(family["experts"][0])
    expert.refresh_from_db()
    assert expert.index_status == Status.FAILED
    assert "moved or is now a link (No such file or directory)" in expert.index_error
    assert "\n" not in expert.index_error


# --- chart data -------------------------------------------------------------------------------

def test_delta_norms_by_layer(registered_family):
    expert = registered_family["experts"][0]
    data = delta_norms_by_layer(checkpoint=expert)
    assert data["layers"] == ["embed_tokens", "layer 0", "layer 1", "lm_head", "norm"]
    assert len(data["norms"]) == len(data["layers"])
    stats = expert.index_stats["tensors"]
    layer0 = sum(v["delta_norm"] ** 2 for k, v in stats.items() if k.startswith("model.layers.0."))
    assert data["norms"][1] == pytest.approx(layer0 ** 0.5)
    assert data["norms"][-1] == 0.0  # the final norm never changes in the fixture
    assert len(data["tensors"]) == len(stats)
    assert delta_norms_by_layer(checkpoint=registered_family["base"]) == {"layers": [], "norms": [],
                                                                         "tensors": []}


# --- Hugging Face sources (never the network) ------------------------------------------------

def test_hf_sources_from_the_offline_cache(alice, acme, family, monkeypatch, run_on_commit):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_cache(hf_cache_dir(acme), "acme/tiny-base", family["base"])
    fill_cache(hf_cache_dir(acme), "acme/tiny-expert", family["experts"][0], revision="v1")
    base = register_checkpoint(team=acme, user=alice, name="hub-base", role="base", hf_repo_id="acme/tiny-base")
    assert base.is_ready and base.source == "hf" and "snapshots" in base.path
    with run_on_commit():
        expert = register_checkpoint(team=acme, user=alice, name="hub-expert", role="expert",
                                     hf_repo_id="acme/tiny-expert", hf_revision="v1")
    expert.refresh_from_db()
    assert expert.index_status == Status.READY, expert.index_error
    assert expert.source_label == "acme/tiny-expert@v1"


def test_hf_offline_and_not_cached_is_a_form_error(alice, acme, monkeypatch, django_capture_on_commit_callbacks):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: register_checkpoint(team=acme, user=alice, name="x", role="base",
                                                  hf_repo_id="acme/absent"), "hf_repo_id")
    assert "offline cache" in msg


def test_hf_bad_repo_id(alice, acme, django_capture_on_commit_callbacks):
    _form_error(django_capture_on_commit_callbacks,
                lambda: register_checkpoint(team=acme, user=alice, name="x", role="base",
                                            hf_repo_id="../../etc"), "hf_repo_id")


def test_hf_download_happens_in_the_job(alice, acme, family, monkeypatch, run_on_commit):
    """Not cached and online: the job downloads (mocked at the module boundary), then indexes."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)
    _register(acme, alice, "base", "base", family["base"])
    calls = []

    def fake_snapshot_download(repo_id, *, local_files_only, cache_dir, **kwargs):
        calls.append(local_files_only)
        if local_files_only:
            raise hf.LocalEntryNotFoundError("not cached")
        return str(fill_cache(cache_dir, "acme/remote", family["experts"][1]))

    monkeypatch.setattr(hf, "snapshot_download", fake_snapshot_download)
    with run_on_commit():
        expert = register_checkpoint(team=acme, user=alice, name="remote", role="expert",
                                     family_name="tiny-llama", hf_repo_id="acme/remote")
        assert expert.index_status == Status.PENDING and expert.path == ""
    expert.refresh_from_db()
    assert calls == [True, False]
    assert expert.index_status == Status.READY, expert.index_error
    assert expert.path.startswith(str(hf_cache_dir(acme))) and expert.tensor_count > 0


# --- deleting checkpoints, and Hub registrations that fail ----------------------------------

def _failed_expert(acme, alice, family, run_on_commit, monkeypatch, name="broken"):
    """An expert of the registered family whose index job failed (the engine's index raised)."""
    from mergehub.registry import services

    def fail(*args, **kwargs):
        raise ValidationError("the disk went away")

    with monkeypatch.context() as patch, run_on_commit():
        patch.setattr(services.engine, "index_model", fail)
        ckpt = _register(acme, alice, name, "expert", family["experts"][0])
    ckpt.refresh_from_db()
    assert ckpt.index_status == Status.FAILED and "the disk went away" in ckpt.index_error
    return ckpt


def test_a_failed_checkpoint_is_deleted_and_its_files_stay(alice, carol, acme, registered_family, family,
                                                           run_on_commit, monkeypatch):
    from mergehub.registry.models import IndexJob
    from mergehub.registry.services import delete_checkpoint

    ckpt = _failed_expert(acme, alice, family, run_on_commit, monkeypatch)
    files = sorted(p.name for p in family["experts"][0].iterdir())
    delete_checkpoint(checkpoint=ckpt, user=carol)  # a member may delete
    assert not Checkpoint.objects.filter(pk=ckpt.pk).exists()
    assert not IndexJob.objects.filter(checkpoint_id=ckpt.pk).exists()
    assert sorted(p.name for p in family["experts"][0].iterdir()) == files  # no file removed
    # expert-1, registered from the same directory, is untouched
    e1 = registered_family["experts"][0]
    e1.refresh_from_db()
    assert e1.is_ready and Family.objects.filter(pk=e1.family_id).exists()


def test_viewers_and_other_teams_cannot_delete(bob, mallory, registered_family):
    from mergehub.registry.services import delete_checkpoint

    expert = registered_family["experts"][1]
    for user in (bob, mallory):
        with pytest.raises(PermissionDenied):
            delete_checkpoint(checkpoint=expert, user=user)
    assert Checkpoint.objects.filter(pk=expert.pk).exists()


def test_delete_is_refused_while_a_run_uses_the_checkpoint(alice, acme, registered_family):
    from mergehub.registry.services import delete_checkpoint
    from mergehub.runs.services import cancel_run, create_run
    from tests.pages.conftest import ties_inputs

    run = create_run(user=alice, team=acme, name="holds them", **ties_inputs(registered_family))  # queued
    expert = registered_family["experts"][1]
    with pytest.raises(ValidationError, match=rf"Run #{run.pk} \(holds them\) is queued with expert-2"):
        delete_checkpoint(checkpoint=expert, user=alice)
    assert Checkpoint.objects.filter(pk=expert.pk).exists()
    cancel_run(run=run, user=alice)
    delete_checkpoint(checkpoint=expert, user=alice)  # a finished run does not hold it
    assert not Checkpoint.objects.filter(pk=expert.pk).exists()
    run.refresh_from_db()
    assert list(run.experts.values_list("name", flat=True)) == ["expert-1"]  # the run itself stays


def test_delete_is_refused_while_indexing_and_for_a_base_with_experts(alice, acme, registered_family, family):
    from mergehub.registry.services import delete_checkpoint

    pending = _register(acme, alice, "pending", "expert", family["experts"][1])  # its job stays queued
    with pytest.raises(ValidationError, match="being indexed right now"):
        delete_checkpoint(checkpoint=pending, user=alice)
    with pytest.raises(ValidationError, match="base of family tiny-llama, which still has expert-1, expert-2, pending"):
        delete_checkpoint(checkpoint=registered_family["base"], user=alice)
    assert Checkpoint.objects.filter(team=acme).count() == 4


def test_deleting_a_lone_base_removes_the_family_made_for_it(alice, acme, family):
    from mergehub.registry.services import delete_checkpoint

    base = _register(acme, alice, "lone", "base", family["base"], family_name="lone-family")
    delete_checkpoint(checkpoint=base, user=alice)
    assert not Family.objects.filter(team=acme).exists() and not Checkpoint.objects.filter(team=acme).exists()
    assert (family["base"] / "model.safetensors").is_file()


def test_a_hub_registration_that_fails_at_once_leaves_nothing(alice, acme, family, monkeypatch,
                                                              django_capture_on_commit_callbacks):
    """The snapshot is cached, so the family is made before the files are pinned; pinning
    fails: the family made for it goes with the registration (one transaction)."""
    from mergehub.engine.api import MergeHubError
    from mergehub.registry import pinning

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fill_cache(hf_cache_dir(acme), "acme/tiny-base", family["base"])

    def refuse(checkpoint):
        assert Family.objects.filter(team=acme, name="hub-family").exists()  # made already
        raise MergeHubError("model.safetensors is a link out of the cache")

    monkeypatch.setattr(pinning, "pin_checkpoint", refuse)
    msg = _form_error(django_capture_on_commit_callbacks,
                      lambda: register_checkpoint(team=acme, user=alice, name="hub-base", role="base",
                                                  family_name="hub-family", hf_repo_id="acme/tiny-base"),
                      "hf_repo_id")
    assert "link out of the cache" in msg
    assert not Family.objects.filter(team=acme).exists() and not Checkpoint.objects.filter(team=acme).exists()


def _offline_hub(monkeypatch):
    """Online as far as the app knows, but every download fails (nothing cached, Hub unreachable)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", False)

    def unreachable(repo_id, **kwargs):
        raise hf.LocalEntryNotFoundError("no connection")

    monkeypatch.setattr(hf, "snapshot_download", unreachable)


def test_a_hub_base_whose_download_fails_can_be_retried_or_deleted(alice, acme, family, monkeypatch,
                                                                   run_on_commit):
    """The download happens in the job: when it fails the checkpoint says why and keeps its
    family (a retry needs the family name); deleting it removes the family made only for it,
    so no half-made family or orphan row remains. A retry re-queues the same job kind."""
    from mergehub.registry.models import IndexJob
    from mergehub.registry.services import delete_checkpoint, retry_index

    _offline_hub(monkeypatch)
    with run_on_commit():
        base = register_checkpoint(team=acme, user=alice, name="hub-base", role="base",
                                   family_name="hub-family", hf_repo_id="acme/absent")
    base.refresh_from_db()
    assert base.index_status == Status.FAILED and base.path == ""
    assert "the Hub could not be reached" in base.index_error
    failed_job = base.index_jobs.get()
    assert failed_job.status == IndexJob.Status.FAILED

    # Retry: the same job layer, a new job marked as the failed one's retry (it fails again here).
    with run_on_commit():
        retry_index(job=failed_job, user=alice)
    retry = IndexJob.objects.get(retry_of=failed_job)
    assert retry.status == IndexJob.Status.FAILED and retry.checkpoint_id == base.pk

    delete_checkpoint(checkpoint=base, user=alice)
    assert not Family.objects.filter(team=acme).exists()
    assert not Checkpoint.objects.filter(team=acme).exists() and not IndexJob.objects.filter(team=acme).exists()


def test_a_hub_expert_whose_download_fails_leaves_the_family_alone(alice, acme, registered_family, monkeypatch,
                                                                    run_on_commit):
    from mergehub.registry.services import delete_checkpoint

    _offline_hub(monkeypatch)
    with run_on_commit():
        expert = register_checkpoint(team=acme, user=alice, name="hub-expert", role="expert",
                                     family_name="tiny-llama", hf_repo_id="acme/absent")
    expert.refresh_from_db()
    assert expert.index_status == Status.FAILED
    delete_checkpoint(checkpoint=expert, user=alice)
    base = registered_family["base"]
    assert Family.objects.get(team=acme).base_id == base.pk
    assert set(Checkpoint.objects.filter(team=acme).values_list("name", flat=True)) == {"base", "expert-1", "expert-2"}
