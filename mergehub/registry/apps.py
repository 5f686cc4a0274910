from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "mergehub.registry"
    label = "registry"
    verbose_name = "Checkpoint registry"

    def ready(self):
        from mergehub.jobs import kinds

        from .indexing import IndexRunner

        kinds.register(IndexRunner)
