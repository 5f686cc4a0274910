from django.contrib import admin

from .models import HubPush


@admin.register(HubPush)
class HubPushAdmin(admin.ModelAdmin):
    list_display = ("pk", "team", "run", "repo_id", "status", "stage", "created_at")
    list_filter = ("status", "queue")
    search_fields = ("repo_id",)
    # the token a member typed is never shown, not even to staff (it is blanked when the job ends)
    exclude = ("token",)
    readonly_fields = ("log", "worker", "attempts", "heartbeat_at", "started_at", "finished_at", "repo_url",
                       "commit_url", "commit_oid", "files_pushed", "endpoint")
