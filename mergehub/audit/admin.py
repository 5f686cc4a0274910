from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the log is written by the services alone, and never edited."""

    list_display = ["created_at", "team", "actor_name", "action", "target_type", "target_label"]
    list_filter = ["action", "team"]
    search_fields = ["actor_name", "target_label", "team__name"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AuditEvent._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
