from django.contrib import admin

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


class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "team", "status", "stage", "queue", "created_at")
    list_filter = ("status", "queue")
    readonly_fields = ("log", "worker", "attempts", "heartbeat_at", "started_at", "finished_at")


admin.site.register(EvaluationJob, JobAdmin)
admin.site.register(SweepJob, JobAdmin)
admin.site.register(FamilyJob, JobAdmin)
