"""Derived numbers on the run pages."""

from mergehub.runs.figures import bytes_saved, plan_savings, served_from_cache, sketch_split
from mergehub.runs.report import with_checkpoint_names


def test_savings_of_plan_numbers():
    assert plan_savings({"full_expert_bytes": 200, "planned_expert_bytes": 50}) == {
        "full": 200, "planned": 50, "skipped": 150, "percent_planned": 25.0}
    assert plan_savings({"full_expert_bytes": 0, "planned_expert_bytes": 0})["percent_planned"] == 0.0
    assert plan_savings({}) is None and plan_savings(None) is None


def test_served_from_cache_is_what_storage_did_not_serve():
    assert served_from_cache({"planned_expert_bytes": 100, "expert_bytes_read": 40}) == 60
    assert served_from_cache({"planned_expert_bytes": 100, "expert_bytes_read": 140}) == 0
    assert served_from_cache({"planned_expert_bytes": 100}) == 0


def test_rows_are_named_after_checkpoints_by_path_or_name():
    rows = [{"name": "/m/a", "path": "/m/a", "planned_bytes": 1}, {"name": "/m/b"}, {"name": "/m/c"}]
    named = with_checkpoint_names(rows, {"/m/a": "alpha", "/m/b": "beta"})
    assert [r["name"] for r in named] == ["alpha", "beta", "/m/c"]
    assert named[0]["planned_bytes"] == 1 and rows[0]["name"] == "/m/a"  # input untouched


def test_served_from_cache_counts_sketches_too():
    metrics = {"planned_expert_bytes": 100, "planned_sketch_bytes": 30, "expert_bytes_read": 40, "sketch_bytes_read": 10}
    assert served_from_cache(metrics) == 50  # 70 - 40 of blocks, 30 - 10 of sketches


def test_sketch_split_of_a_plan_and_of_a_runs_metrics():
    plan = {"planned_expert_bytes": 100, "sketch_bytes": 30, "block_bytes": 70, "sketches_planned": 4, "sketch_rank": 8}
    assert sketch_split(plan) == {"total": 100, "sketches": 30, "blocks": 70, "count": 4, "rank": 8,
                                  "requested": None, "read": None}
    metrics = {"planned_expert_bytes": 100, "planned_sketch_bytes": 30, "sketches_planned": 4, "sketch_rank": 8,
               "sketch_bytes_requested": 30, "sketch_bytes_read": 0}
    assert sketch_split(metrics) == {"total": 100, "sketches": 30, "blocks": 70, "count": 4, "rank": 8,
                                     "requested": 30, "read": 0}
    # no sketch planned (off, none worth it, or a run from before sketches): nothing to split
    assert sketch_split({**plan, "sketch_bytes": 0}) is None
    assert sketch_split({"planned_expert_bytes": 100}) is None and sketch_split(None) is None


def test_bytes_saved_counts_the_sketches_read_as_spent():
    assert bytes_saved({"full_expert_bytes": 1000, "expert_bytes_requested": 200, "sketch_bytes_requested": 50}) == 750
    assert bytes_saved({"full_expert_bytes": 1000, "expert_bytes_requested": 200}) == 800  # before sketches
    assert bytes_saved({"full_expert_bytes": 1000, "planned_expert_bytes": 300}) == 700
    assert bytes_saved({"full_expert_bytes": 1000}) is None


def test_base_only_warns_only_when_nothing_at_all_is_planned():
    from mergehub.runs.figures import base_only_warning

    nothing = {"budget": "1B", "planned_expert_bytes": 0, "nonzero_expert_bytes": 4096}
    assert "the output equals the base" in base_only_warning(nothing) and "budget 1B" in base_only_warning(nothing)
    # sketches and no block: the unread blocks hold base + sketch, not the base
    sketches_only = dict(nothing, planned_expert_bytes=512, sketch_bytes=512, blocks_planned=0)
    assert base_only_warning(sketches_only) is None
    assert base_only_warning(dict(nothing, nonzero_expert_bytes=0)) is None  # experts equal to the base: no budget issue
    assert base_only_warning(None) is None and base_only_warning({}) is None
