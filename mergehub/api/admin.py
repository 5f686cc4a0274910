from django.contrib import admin

from .models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Site admins see and revoke tokens; they cannot create them here (no plain text to show)."""

    list_display = ["name", "prefix", "user", "team", "can_write", "created_at", "expires_at", "revoked_at",
                    "last_used_at"]
    list_filter = ["can_write", "team"]
    search_fields = ["name", "prefix", "user__username", "team__name"]
    readonly_fields = ["user", "team", "prefix", "digest", "created_at", "last_used_at"]

    def has_add_permission(self, request):
        return False
