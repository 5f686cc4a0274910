"""Building blocks for API views: team scoping, 404 for other teams' objects, pagination.

    class RunList(TeamScopedMixin, generics.ListAPIView):
        serializer_class = RunSerializer
        def get_queryset(self):
            return self.scoped(MergeRun.objects.all())      # only the token's team

    run = get_scoped_or_404(request, MergeRun.objects.all(), pk, "No such run.")

``scoped`` / ``get_scoped_or_404`` filter on ``team``; pass ``team_field`` where the team is
reached another way (e.g. ``"checkpoint__team"``). Permissions (permissions.HasTeamToken) and
the token authentication are the defaults of every API view (REST_FRAMEWORK in settings).
"""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination

from .permissions import token_team


class Pagination(PageNumberPagination):
    """{count, next, previous, results}, 50 to a page (``?page=N``)."""

    page_size = 50


def scoped(request, queryset: QuerySet, team_field: str = "team") -> QuerySet:
    """``queryset`` narrowed to the token's team."""
    return queryset.filter(**{team_field: token_team(request)})


def get_scoped_or_404(request, queryset: QuerySet, pk, message: str = "Not found.",
                      team_field: str = "team"):
    """The object ``pk`` of the token's team; Http404 (the same answer as for an id that does not
    exist) for anything else, another team's object included."""
    try:
        pk = int(pk)
    except (TypeError, ValueError):
        raise Http404(message) from None
    obj = scoped(request, queryset, team_field).filter(pk=pk).first()
    if obj is None:
        raise Http404(message)
    return obj


class TeamScopedMixin:
    """For API views: ``self.team``, ``self.scoped(qs)`` and ``self.get_scoped(qs, pk)``."""

    team_field = "team"
    not_found = "Not found."

    @property
    def team(self):
        return token_team(self.request)

    def scoped(self, queryset: QuerySet) -> QuerySet:
        return scoped(self.request, queryset, self.team_field)

    def get_scoped(self, queryset: QuerySet, pk):
        return get_scoped_or_404(self.request, queryset, pk, self.not_found, self.team_field)


def form_errors(form) -> serializers.ValidationError:
    """A page form's errors as the API's 400: {field: [message, ...]}, the form's own words."""
    return serializers.ValidationError({
        ("non_field_errors" if field == "__all__" else field): [e["message"] for e in errors]
        for field, errors in form.errors.get_json_data().items()})
