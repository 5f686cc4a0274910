"""The sweep job's runner: the engine's one-pass sweep gives every budget's plan and exact
deviation from the full-read merge, with low-rank sketches ("sketch" points) and, when
sketches are on, with exact blocks only as well ("blocks" points); when the sweep has tasks,
each point's merge is then written, scored and deleted (its scores stay in the cache), and the
base and experts are scored for reference."""

from __future__ import annotations

import shutil

from mergehub.engine import api as engine
from mergehub.engine.api import ConfigError, Progress
from mergehub.jobs.runner import JobRunner
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import catalog_dir, sweep_output_dir
from mergehub.runs.runner import merge_device
from mergehub.runs.services import engine_mapping

from .evaluating import Subject, TaskScorer, checkpoint_subject
from .models import SweepJob
from .selectors import BLOCKS, MODE_LABELS, SKETCH

POINT_KEYS = ("budget", "budget_bytes", "full_expert_bytes", "planned_expert_bytes", "blocks_planned",
              "blocks_total", "certificate", "plan_digest", "deviation", "mode", "sketch_rank", "sketch_bytes",
              "block_bytes", "sketches_planned", "sketches_available")
# what a point's merge measured (copied to a point whose plan is the same: see _merge_and_score)
METRIC_KEYS = ("expert_bytes_read", "expert_bytes_requested", "sketch_bytes_read", "sketch_bytes_requested")
MERGE_KEYS = (*METRIC_KEYS, "scores", "model_hash")


class SweepRunner(JobRunner):
    model = SweepJob
    kind = "sweep"

    def work(self) -> dict:
        sweep = self.job
        device, note = merge_device(sweep.queue)
        if note:
            self.note(note)
        inputs = self._inputs()
        config = engine.load_config_mapping(engine_mapping(sweep.config))
        rank = engine.merge_sketch_rank(config, sweep.sketch_rank)
        rows = engine.sweep(config, sweep.budgets, seed=sweep.seed, device=device, block_size=sweep.block_size,
                            catalog_dir=catalog_dir(), progress=self._reporter("sweep"), cancel=self.should_cancel,
                            sketch_rank=rank)
        points = self._compared(rank, [{key: row.get(key) for key in POINT_KEYS} for row in rows])
        self.note("deviation measured for every budget in one pass")
        tasks = list(sweep.tasks.order_by("name"))
        references = []
        if tasks:
            scorer = TaskScorer(self, sweep.team, tasks, device)
            refs = [checkpoint_subject(c, "base" if c.pk == sweep.base_id else "expert") for c in inputs]
            for subject in refs:
                scores = scorer.score(subject)
                references.append({**subject.record(), "scores": scores})
            merged: dict[str, dict] = {}  # plan digest -> the point whose merge was written
            for i, point in enumerate(points):
                self._merge_and_score(config, device, i, point, scorer, rank, merged)
        return {"points": points, "references": references}

    def _compared(self, rank: int, points: list[dict]) -> list[dict]:
        """The engine's points, less the sketch ones when the experts' index holds no sketch of
        ``rank`` (every tensor too small for one to pay): those would only repeat the blocks."""
        if rank and not any(p["mode"] == SKETCH and p.get("sketches_available") for p in points):
            self.note(f"no sketch of rank ≤ {rank} in the experts' index (no changed matrix is large enough for one "
                      "to take under half its bytes): swept with exact blocks only")
            return [p for p in points if p["mode"] != SKETCH]
        if rank:
            self.note(f"every budget planned twice: with sketches of rank ≤ {rank} and with exact blocks only")
        return points

    def _inputs(self) -> list[Checkpoint]:
        ids = set((self.job.config.get("checkpoint_ids") or {}).values())
        found = list(Checkpoint.objects.filter(pk__in=ids, team=self.job.team).select_related("team"))
        if len(found) != len(ids):
            raise ConfigError("a checkpoint of this sweep was deleted; start a new sweep")
        return sorted(found, key=lambda c: (c.pk != self.job.base_id, c.name))

    def _reporter(self, stage: str, message: str = ""):
        def progress(p: Progress) -> None:
            self.on_progress(Progress(stage, p.done, p.total, p.unit, message or p.message))
        return progress

    def _merge_and_score(self, config, device: str, i: int, point: dict, scorer: TaskScorer, rank: int,
                         merged: dict[str, dict]) -> None:
        """Write point ``i``'s merge (with sketches of ``rank`` for a "sketch" point, exact blocks
        only for a "blocks" one), score it, keep its numbers and delete the files. A point whose
        plan (digest) was merged already, such as the full budget of both modes or a budget where
        the plan took no sketch, is the same merge: it takes that merge's numbers."""
        same = merged.get(point["plan_digest"])
        if same is not None:
            point.update({key: same[key] for key in MERGE_KEYS if key in same})
            point["merged_with"] = same["mode"]
            return
        budget, mode = point["budget"], point.get("mode") or BLOCKS
        out = sweep_output_dir(self.job) / f"budget-{i}"
        label = f"budget {budget}" + (f" ({MODE_LABELS[mode]})" if rank else "")
        result = engine.run_merge(config, out, budget=budget, seed=self.job.seed, device=device,
                                  block_size=self.job.block_size, catalog_dir=catalog_dir(), force=True,
                                  sketch_rank=rank if mode == SKETCH else 0,
                                  progress=self._reporter("merge", label), cancel=self.should_cancel)
        try:
            metrics = result.metrics
            for key in METRIC_KEYS:
                point[key] = metrics.get(key)
            subject = Subject(label, "budget", out, {})
            point["scores"] = scorer.score(subject)
            point["model_hash"] = subject.model_hash
            merged[point["plan_digest"]] = point
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def success_log(self, fields: dict) -> list[str]:
        points = fields["points"]
        budgets = len({p["budget"] for p in points})
        both = len({p.get("mode") for p in points}) > 1
        return [f"succeeded: {budgets} budgets" + (", with and without sketches" if both else "")
                + (f", each merged and scored on {self.job.tasks.count()} task(s)" if fields["references"] else "")]

    @classmethod
    def cleanup(cls, job: SweepJob) -> None:
        """Delete the budget merges a dead worker left behind."""
        shutil.rmtree(sweep_output_dir(job), ignore_errors=True)
