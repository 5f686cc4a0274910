"""The sweep job's runner: the engine's one-pass sweep gives every budget's plan and exact
deviation from the full-read merge; when the sweep has tasks, each budget's merge is then
written, scored and deleted (its scores stay in the cache), and the base and experts are
scored for reference."""

from __future__ import annotations

import shutil

from mergehub.engine import api as engine
from mergehub.engine.control import Progress
from mergehub.engine.errors import ConfigError
from mergehub.jobs.runner import JobRunner
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import catalog_dir, sweep_output_dir
from mergehub.runs.runner import merge_device
from mergehub.runs.services import engine_mapping

from .evaluating import Subject, TaskScorer, checkpoint_subject
from .models import SweepJob

POINT_KEYS = ("budget", "budget_bytes", "full_expert_bytes", "planned_expert_bytes", "blocks_planned",
              "blocks_total", "certificate", "plan_digest", "deviation")


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
        rows = engine.sweep(config, sweep.budgets, seed=sweep.seed, device=device, block_size=sweep.block_size,
                            catalog_dir=catalog_dir(), progress=self._reporter("sweep"), cancel=self.should_cancel)
        points = [{key: row.get(key) for key in POINT_KEYS} for row in rows]
        self.note("deviation measured for every budget in one pass")
        tasks = list(sweep.tasks.order_by("name"))
        references = []
        if tasks:
            scorer = TaskScorer(self, sweep.team, tasks, device)
            refs = [checkpoint_subject(c, "base" if c.pk == sweep.base_id else "expert") for c in inputs]
            for subject in refs:
                scores = scorer.score(subject)
                references.append({**subject.record(), "scores": scores})
            for i, point in enumerate(points):
                self._merge_and_score(config, device, i, point, scorer)
        return {"points": points, "references": references}

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

    def _merge_and_score(self, config, device: str, i: int, point: dict, scorer: TaskScorer) -> None:
        """Write budget ``i``'s merge, score it, keep its numbers and delete the files."""
        budget = point["budget"]
        out = sweep_output_dir(self.job) / f"budget-{i}"
        result = engine.run_merge(config, out, budget=budget, seed=self.job.seed, device=device,
                                  block_size=self.job.block_size, catalog_dir=catalog_dir(), force=True,
                                  progress=self._reporter("merge", f"budget {budget}"), cancel=self.should_cancel)
        try:
            metrics = result.metrics
            point["expert_bytes_read"] = metrics.get("expert_bytes_read")
            point["expert_bytes_requested"] = metrics.get("expert_bytes_requested")
            subject = Subject(f"budget {budget}", "budget", out, {})
            point["scores"] = scorer.score(subject)
            point["model_hash"] = subject.model_hash
        finally:
            shutil.rmtree(out, ignore_errors=True)

    def success_log(self, fields: dict) -> list[str]:
        return [f"succeeded: {len(fields['points'])} budgets"
                + (f", each merged and scored on {self.job.tasks.count()} task(s)" if fields["references"] else "")]

    @classmethod
    def cleanup(cls, job: SweepJob) -> None:
        """Delete the budget merges a dead worker left behind."""
        shutil.rmtree(sweep_output_dir(job), ignore_errors=True)
