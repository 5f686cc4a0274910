"""``mergehub family train``: the summary table, reuse, and bad input (exit 2, one line)."""

from __future__ import annotations

import pytest

from mergehub.engine import cli
from mergehub.family import load_family
from mergehub.family.recipe import DEFAULT_RECIPE

QUICK = ["--steps-scale", "0.01", "--workers", "0"]


def test_train_prints_a_summary_and_then_reuses(tmp_path, capsys):
    out = tmp_path / "fam"
    assert cli.main(["family", "train", str(out), "--seed", "3", *QUICK]) == 0
    printed = capsys.readouterr().out
    for name in ("base", "expert-reverse", "expert-sort", "expert-caesar", "expert-swap"):
        assert name in printed
    assert "trained the family" in printed and "seed 3" in printed
    assert load_family(out, seed=3, recipe=DEFAULT_RECIPE.scaled(0.01)) is not None

    assert cli.main(["family", "train", str(out), "--seed", "3", *QUICK]) == 0
    assert "reused the family" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--workers", "-1"], "--workers"),
    (["--steps-scale", "0"], "--steps-scale"),
    (["--seed", "-2"], "seed"),
])
def test_bad_arguments(tmp_path, capsys, args, message):
    assert cli.main(["family", "train", str(tmp_path / "fam"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mergehub: error:") and message in err and err.count("\n") == 1
    assert not (tmp_path / "fam").exists()


def test_existing_directory_that_is_not_a_family(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert cli.main(["family", "train", str(tmp_path / "mine"), "--force", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "not a MergeHub demo family" in err and err.count("\n") == 1
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
