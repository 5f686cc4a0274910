from django.contrib import admin

from .models import MergeRun


@admin.register(MergeRun)
class MergeRunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "team", "author", "method", "budget", "queue", "status", "progress",
                    "created_at", "finished_at"]
    list_filter = ["status", "queue", "method", "team", "measure_deviation"]
    search_fields = ["name", "method", "author__username", "team__name", "worker", "error"]
    readonly_fields = ["config", "plan", "metrics", "manifest", "log", "output_path", "error", "worker",
                       "attempts", "progress", "stage", "created_at", "started_at", "finished_at",
                       "heartbeat_at", "expert_bytes_saved"]
    raw_id_fields = ["base", "author", "retry_of"]
    filter_horizontal = ["experts"]
    date_hierarchy = "created_at"
