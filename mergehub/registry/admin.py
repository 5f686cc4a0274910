from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from mergehub.ui.admin_display import bytes_display, json_details

from .models import Checkpoint, Family, IndexJob, StorageRoot


@admin.register(Family)
class FamilyAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "base", "tensor_count", "created_at"]
    list_filter = ["team"]
    search_fields = ["name", "team__name", "base__name", "signature_digest"]
    readonly_fields = ["signature", "signature_digest", "tensor_count", "created_at"]
    raw_id_fields = ["base"]


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "team", "family", "role", "source", "index_status", "size",
                    "tensor_count", "added_by", "created_at"]
    list_filter = ["index_status", "role", "source", "team", "family"]
    search_fields = ["name", "local_path", "path", "hf_repo_id", "family__name", "team__name"]
    size = bytes_display("size_bytes", "size")
    index_stats_json = json_details("index_stats", "index statistics")
    exclude = ["size_bytes", "index_stats"]  # shown read-only, as ``size`` and ``index_stats_json``
    readonly_fields = ["path", "size", "tensor_count", "file_hashes", "index_stats_json",
                       "indexed_at", "index_error", "created_at"]
    raw_id_fields = ["family", "added_by"]
    actions = ["reindex"]

    @admin.action(description="Re-index selected checkpoints")
    def reindex(self, request, queryset):
        from .services import queue_reindex  # the engine loads only when the action runs

        queued = 0
        for checkpoint in queryset:
            try:
                queue_reindex(checkpoint=checkpoint, user=request.user)
                queued += 1
            except ValidationError as err:
                self.message_user(request, " ".join(err.messages), messages.WARNING)
        self.message_user(request, f"Queued {queued} checkpoint(s) for indexing.", messages.SUCCESS)


@admin.register(IndexJob)
class IndexJobAdmin(admin.ModelAdmin):
    list_display = ["id", "checkpoint", "team", "author", "status", "progress", "created_at", "finished_at"]
    list_filter = ["status", "team"]
    search_fields = ["checkpoint__name", "team__name", "author__username", "worker", "error"]
    readonly_fields = ["log", "error", "worker", "attempts", "progress", "stage", "created_at", "started_at",
                       "finished_at", "heartbeat_at"]
    raw_id_fields = ["checkpoint", "author", "retry_of"]


@admin.register(StorageRoot)
class StorageRootAdmin(admin.ModelAdmin):
    """Site admins open directories to one team here (docs/security.md)."""

    list_display = ["path", "team", "note", "created_at"]
    list_filter = ["team"]
    search_fields = ["path", "team__name", "note"]
