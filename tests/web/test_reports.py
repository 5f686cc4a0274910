"""Derived numbers on the run pages."""

from mergehub.web.reports import savings_of, served_from_cache, with_checkpoint_names


def test_savings_of_plan_numbers():
    assert savings_of({"full_expert_bytes": 200, "planned_expert_bytes": 50}) == {
        "full": 200, "planned": 50, "skipped": 150, "percent_planned": 25.0}
    assert savings_of({"full_expert_bytes": 0, "planned_expert_bytes": 0})["percent_planned"] == 0.0
    assert savings_of({}) is None and savings_of(None) is None


def test_served_from_cache_is_what_storage_did_not_serve():
    assert served_from_cache({"planned_expert_bytes": 100, "expert_bytes_read": 40}) == 60
    assert served_from_cache({"planned_expert_bytes": 100, "expert_bytes_read": 140}) == 0
    assert served_from_cache({"planned_expert_bytes": 100}) == 0


def test_rows_are_named_after_checkpoints_by_path_or_name():
    rows = [{"name": "/m/a", "path": "/m/a", "planned_bytes": 1}, {"name": "/m/b"}, {"name": "/m/c"}]
    named = with_checkpoint_names(rows, {"/m/a": "alpha", "/m/b": "beta"})
    assert [r["name"] for r in named] == ["alpha", "beta", "/m/c"]
    assert named[0]["planned_bytes"] == 1 and rows[0]["name"] == "/m/a"  # input untouched
