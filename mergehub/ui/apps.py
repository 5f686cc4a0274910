from django.apps import AppConfig


class UiConfig(AppConfig):
    """An app only so that Django finds the ``mergehub`` template library; it has no models."""

    name = "mergehub.ui"
    label = "ui"
    verbose_name = "Page helpers"
