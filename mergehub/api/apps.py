from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "mergehub.api"
    label = "api"
    verbose_name = "REST API"

    def ready(self):
        from . import schema  # noqa: F401  registers the OpenAPI description of the token auth
