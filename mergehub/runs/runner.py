"""The merge job's runner: runs the engine on a claimed MergeRun (see mergehub/jobs/runner.py
for the life cycle every job shares)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.conf import settings

from mergehub.engine import api as engine
from mergehub.engine.api import ConfigError, MergeHubError
from mergehub.jobs.runner import JobRunner
from mergehub.registry import pinning
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import catalog_dir, outputs_dir, run_output_dir
from mergehub.ui.formatting import human_bytes

from .figures import bytes_saved, sketch_split
from .models import MergeRun
from .services import engine_mapping
from .signals import merge_settled

log = logging.getLogger(__name__)
GPU_QUEUE = "gpu"


def merge_device(queue: str) -> tuple[str, str | None]:
    """(engine device, note for the log). The GPU queue needs CUDA: without it the merge fails,
    unless MERGEHUB_GPU_FALLBACK_TO_CPU lets it run on the CPU (and the log says so)."""
    if queue != GPU_QUEUE:
        return "auto", None
    if engine.cuda_available():
        return "cuda", None
    if settings.MERGEHUB_GPU_FALLBACK_TO_CPU:
        return "cpu", "no CUDA device on this GPU-queue worker; running on the CPU (MERGEHUB_GPU_FALLBACK_TO_CPU)"
    raise ConfigError("this run is on the GPU queue but its worker has no CUDA device; start a GPU worker, "
                      "set MERGEHUB_GPU_FALLBACK_TO_CPU=true on this one, or retry on the CPU queue")


class MergeRunner(JobRunner):
    model = MergeRun
    kind = "merge"

    def work(self) -> dict:
        run = self.job
        device, note = merge_device(run.queue)
        if note:
            self.note(note)
        self._verify_inputs()
        config = engine.load_config_mapping(engine_mapping(run.config))
        result = engine.run_merge(
            config, run_output_dir(run), budget=run.budget, seed=run.seed, device=device,
            block_size=run.block_size, catalog_dir=catalog_dir(), force=False, sketch_rank=run.sketch_rank,
            measure_deviation=run.measure_deviation, progress=self.on_progress,
            cancel=self.should_cancel, verify=self._note_plan_changes)
        return {"metrics": result.metrics, "manifest": result.manifest, "output_path": str(result.out_dir),
                "plan": self._plan_that_ran(result.plan), "expert_bytes_saved": bytes_saved(result.metrics)}

    def _verify_inputs(self) -> None:
        """The checkpoints' files must still be the ones registered (registry/pinning.py)."""
        ids = set((self.job.config.get("checkpoint_ids") or {}).values())
        checkpoints = list(Checkpoint.objects.filter(pk__in=ids, team=self.job.team).select_related("team"))
        if len(checkpoints) != len(ids):
            raise ConfigError("a checkpoint of this run was deleted; start a new merge")
        for checkpoint in checkpoints:
            pinning.verify_checkpoint(checkpoint)

    def _note_plan_changes(self, manifest: dict) -> None:
        """The worker plans again from the catalog; if that plan is not the one queued (an
        expert was re-indexed since), the run goes ahead with the new one and says so."""
        queued = (self.job.plan or {}).get("plan_digest")
        ran = manifest["plan"]["digest"]
        if queued and queued != ran:
            self.note(f"note: the plan changed since the run was queued (the catalog changed); ran plan "
                            f"{ran[:12]} instead of {queued[:12]}; the report shows the plan that ran")
        else:
            self.note(f"ran the queued plan {ran[:12]}")

    def _plan_that_ran(self, plan) -> dict:
        ran = plan.to_dict()
        queued = (self.job.plan or {}).get("plan_digest")
        if queued and queued != ran["plan_digest"]:
            ran["queued_plan_digest"] = queued
        return ran

    def success_log(self, fields: dict) -> list[str]:
        metrics = fields["metrics"]
        sketches = sketch_split(metrics)
        used = (f" (exact blocks) and {human_bytes(sketches['read'])} of {sketches['count']} sketches of rank ≤"
                f" {sketches['rank']} from the catalog" if sketches else "")
        return [f"succeeded: read {human_bytes(metrics.get('expert_bytes_read'))} of "
                f"{human_bytes(metrics.get('full_expert_bytes'))} expert bytes{used}; output in {fields['output_path']}",
                *(f"warning: {w}" for w in metrics.get("warnings") or [])]

    @classmethod
    def settle_related(cls, job: MergeRun, status: str) -> None:
        merge_settled.send(sender=MergeRun, run=job, status=status)

    @classmethod
    def reconcile(cls, job: MergeRun) -> dict | None:
        """A published output with its manifest means the merge succeeded, whatever the row says."""
        out_dir = run_output_dir(job)
        try:
            manifest = engine.read_manifest(out_dir)
        except MergeHubError:
            return None
        metrics = manifest.get("metrics") or {}
        return {"metrics": metrics, "manifest": manifest, "output_path": str(out_dir),
                "expert_bytes_saved": bytes_saved(metrics)}

    @classmethod
    def cleanup(cls, job: MergeRun) -> None:
        """Delete the staging directories a dead worker left in the outputs dir."""
        for path in outputs_dir(job.team).glob(f".{run_output_dir(job).name}.staging-*"):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s", Path(path))
