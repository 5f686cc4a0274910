"""Read-only displays the Django admin pages share: sizes in binary units, JSON folded away."""

from __future__ import annotations

import json
from typing import Any, Callable

from django.contrib import admin
from django.utils.html import format_html

from .formatting import human_bytes


def bytes_display(field: str, description: str) -> Callable[[Any, Any], str]:
    """A ModelAdmin column / read-only field showing ``field`` (a byte count) as 1.50 MiB,
    sortable by the raw number."""

    @admin.display(description=description, ordering=field)
    def show(self, obj) -> str:
        return human_bytes(getattr(obj, field))

    return show


def json_details(field: str, description: str) -> Callable[[Any, Any], str]:
    """A read-only field showing the JSON in ``field`` inside a closed <details>, its summary
    saying how many entries it holds."""

    @admin.display(description=description)
    def show(self, obj) -> str:
        value = getattr(obj, field)
        if value in (None, {}, []):
            return "—"
        count = f"{len(value)} entr{'y' if len(value) == 1 else 'ies'}" if isinstance(value, (dict, list)) else "value"
        return format_html('<details><summary>{}</summary><pre style="white-space:pre-wrap">{}</pre></details>',
                           count, json.dumps(value, indent=2, sort_keys=True, default=str))

    return show
