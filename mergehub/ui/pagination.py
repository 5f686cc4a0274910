"""Pagination for the list pages: Django's Paginator, forgiving page numbers, and page links
that keep the list's filters. Rendered by templates/ui/_pagination.html."""

from __future__ import annotations

from urllib.parse import urlencode

from django.core.paginator import Paginator

PER_PAGE = 25


def paginate(request, queryset, *, filters: dict[str, str], per_page: int = PER_PAGE) -> dict:
    """Template context for one page of ``queryset`` (which must be ordered).

    ``?page=`` past the end gives the last page, anything that is not a page number the first
    (``Paginator.get_page``): a stale or hand-edited link never fails. ``page_query`` is the
    non-empty ``filters`` as a query string, for the page links to carry.

    The count and the page are found on the ids alone, then the page's rows are loaded by id
    (``rows_in_order``): filtering, ordering and skipping then read only an index where one
    serves the filter and order, never the wide rows of the pages before.
    """
    ids = queryset.values_list("pk", flat=True)
    page = Paginator(ids, per_page).get_page(request.GET.get("page"))
    page.object_list = rows_in_order(queryset, list(page.object_list))
    return {"page_obj": page, "page_query": urlencode({k: v for k, v in filters.items() if v})}


def rows_in_order(queryset, ids: list) -> list:
    """The rows of ``queryset`` with these ids, in the order of ``ids``, in one query."""
    if not ids:
        return []
    rows = {row.pk: row for row in queryset.filter(pk__in=ids).order_by()}
    return [rows[pk] for pk in ids if pk in rows]
