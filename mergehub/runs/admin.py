from django.contrib import admin

from mergehub.ui.admin_display import bytes_display, json_details

from .models import MergeRun

JSON_FIELDS = ("config", "plan", "metrics", "manifest")


@admin.register(MergeRun)
class MergeRunAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "team", "author", "method", "budget", "queue", "status", "progress",
                    "saved", "created_at", "finished_at"]
    list_filter = ["status", "queue", "method", "team", "measure_deviation"]
    search_fields = ["name", "method", "author__username", "team__name", "worker", "error"]
    # What the job and the engine wrote is shown, never edited here.
    readonly_fields = ["output_path", "error", "worker", "attempts", "progress", "stage", "created_at",
                       "started_at", "finished_at", "heartbeat_at", "saved", "log",
                       *(f"{name}_json" for name in JSON_FIELDS)]
    raw_id_fields = ["base", "author", "retry_of"]
    filter_horizontal = ["experts"]
    date_hierarchy = "created_at"
    exclude = [*JSON_FIELDS, "expert_bytes_saved"]  # shown read-only below: folded, in binary units

    saved = bytes_display("expert_bytes_saved", "expert bytes saved")
    config_json = json_details("config", "config")
    plan_json = json_details("plan", "plan")
    metrics_json = json_details("metrics", "metrics")
    manifest_json = json_details("manifest", "manifest")
