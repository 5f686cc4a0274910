from django.contrib import admin

from mergehub.ui.admin_display import json_details

from .models import EvalResult, EvalTask, EvaluationJob, FamilyJob, SweepJob


@admin.register(EvalTask)
class EvalTaskAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "kind", "n_examples", "source", "created_at")
    list_filter = ("kind", "source", "team")
    search_fields = ("name",)
    readonly_fields = ("content_hash", "settings_key", "path", "created_at")


@admin.register(EvalResult)
class EvalResultAdmin(admin.ModelAdmin):
    list_display = ("task_name", "team", "model_hash", "score", "n", "created_at")
    list_filter = ("team",)
    search_fields = ("task_name", "model_hash")
    # An evaluation's outcome: recomputed by evaluating again, never edited.
    readonly_fields = ("team", "model_hash", "task", "task_name", "task_hash", "settings_key", "metric",
                       "higher_is_better", "n", "score", "ci_low", "ci_high", "samples_json", "seconds", "device",
                       "created_at")
    exclude = ("samples",)
    samples_json = json_details("samples", "samples")


class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "team", "status", "stage", "queue", "created_at")
    list_filter = ("status", "queue")
    readonly_fields = ("log", "worker", "attempts", "heartbeat_at", "started_at", "finished_at")


admin.site.register(EvaluationJob, JobAdmin)
class SweepJobAdmin(JobAdmin):
    readonly_fields = (*JobAdmin.readonly_fields, "points_json", "references_json")
    exclude = ("points", "references")
    points_json = json_details("points", "points")
    references_json = json_details("references", "references")


admin.site.register(SweepJob, SweepJobAdmin)
admin.site.register(FamilyJob, JobAdmin)
