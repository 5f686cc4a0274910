from django.contrib import admin

from .models import Entry, Review


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ("run", "state", "updated_at")
    list_filter = ("state",)
    search_fields = ("run__name",)
    list_select_related = ("run",)
    readonly_fields = ("run", "state", "updated_at")  # changed through the review form, which audits


@admin.register(Entry)
class EntryAdmin(admin.ModelAdmin):
    list_display = ("run", "author_name", "kind", "created_at")
    list_filter = ("kind",)
    search_fields = ("body", "author_name")
    list_select_related = ("run",)
    readonly_fields = ("run", "author", "author_name", "kind", "body", "created_at")
