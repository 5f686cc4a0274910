"""Pinned files: a checkpoint's files are recorded at registration and checked again, without
following links, at index and merge time; what changed or moved is refused."""

import os
import shutil

import pytest
from django.core.exceptions import ValidationError

from mergehub.jobs.dispatch import run_next_job
from mergehub.registry.models import Checkpoint
from mergehub.registry.pinning import PinMismatch, verify_checkpoint
from mergehub.registry.services import register_checkpoint, reindex_checkpoint
from mergehub.runs import services as run_services
from mergehub.runs.models import MergeRun


def _queue(fam, user, team, monkeypatch) -> MergeRun:
    from mergehub.jobs import dispatch

    with monkeypatch.context() as m:
        m.setattr(dispatch, "wake", lambda queue, job=None: True)  # queued only: the test runs it
        return run_services.create_run(user=user, team=team, method="task_arithmetic", base=fam["base"],
                                       experts=[(e, {"weight": 0.5}) for e in fam["experts"]], budget="1")


def _run(run: MergeRun) -> MergeRun:
    run_next_job("cpu", "merge", run.pk)
    run.refresh_from_db()
    return run


def test_registration_pins_every_weight_file(registered_family):
    for checkpoint in [registered_family["base"], *registered_family["experts"]]:
        ident = checkpoint.file_identity["model.safetensors"]
        st = os.stat(os.path.join(checkpoint.path, "model.safetensors"))
        assert ident == [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
        verify_checkpoint(checkpoint)


def test_a_folder_swapped_for_a_link_after_registration_is_refused(registered_family, alice, acme,
                                                                   monkeypatch, tmp_path, run_on_commit):
    """The attack: register your own folder, then replace it with a link to somebody else's
    model. The link is never followed: the merge fails naming the checkpoint, and so does a
    re-index."""
    expert = registered_family["experts"][0]
    run = _queue(registered_family, alice, acme, monkeypatch)  # queued before the swap
    elsewhere = tmp_path / "someone-elses"
    shutil.copytree(expert.path, elsewhere)
    shutil.rmtree(expert.path)
    os.symlink(elsewhere, expert.path)
    run = _run(run)
    assert run.status == MergeRun.Status.FAILED
    assert run.error.startswith(f"{expert.name}: ") and "moved or is now a link" in run.error
    assert "someone-elses" not in run.error
    with pytest.raises(ValidationError, match="moved or is now a link"):  # a new merge is refused at once
        _queue(registered_family, alice, acme, monkeypatch)
    with run_on_commit():
        reindex_checkpoint(checkpoint=expert, user=alice)
    expert.refresh_from_db()
    assert expert.index_status == Checkpoint.IndexStatus.FAILED and "moved or is now a link" in expert.index_error


def test_a_file_changed_after_registration_is_refused_until_reindexed(registered_family, alice, acme,
                                                                      monkeypatch, run_on_commit):
    expert = registered_family["experts"][1]
    queued = _queue(registered_family, alice, acme, monkeypatch)
    weights = os.path.join(expert.path, "model.safetensors")
    data = open(weights, "rb").read()
    os.remove(weights)
    with open(weights, "wb") as f:  # same bytes, a new file: another inode
        f.write(data)
    with pytest.raises(PinMismatch, match="model.safetensors changed since it was registered"):
        verify_checkpoint(Checkpoint.objects.get(pk=expert.pk))
    assert "changed since it was registered" in _run(queued).error  # queued before the change
    with pytest.raises(ValidationError, match="re-index it"):
        _queue(registered_family, alice, acme, monkeypatch)
    with run_on_commit():
        reindex_checkpoint(checkpoint=expert, user=alice)
    expert.refresh_from_db()
    assert expert.index_status == Checkpoint.IndexStatus.READY
    assert _run(_queue(registered_family, alice, acme, monkeypatch)).status == MergeRun.Status.SUCCEEDED


def test_a_checkpoint_pinned_before_pinning_existed_must_be_reindexed(registered_family):
    expert = registered_family["experts"][0]
    Checkpoint.objects.filter(pk=expert.pk).update(file_identity={})
    with pytest.raises(PinMismatch, match="re-index it once"):
        verify_checkpoint(Checkpoint.objects.get(pk=expert.pk))


def test_a_weight_file_linking_out_of_the_root_is_refused(family, alice, acme, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    weights = family["base"] / "model.safetensors"
    shutil.move(weights, outside / "model.safetensors")
    os.symlink(outside / "model.safetensors", weights)
    with pytest.raises(ValidationError) as err:
        register_checkpoint(team=acme, user=alice, name="b", role="base", local_path=str(family["base"]))
    assert "leads outside its root" in str(err.value)
    assert not Checkpoint.objects.exists()


def test_a_file_name_that_is_not_utf8_is_a_form_error(family, alice, acme):
    bad = os.fsencode(str(family["base"])) + b"/shard-\xff.safetensors"
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(ValidationError) as err:
        register_checkpoint(team=acme, user=alice, name="b", role="base", local_path=str(family["base"]))
    assert "not valid UTF-8" in str(err.value)
