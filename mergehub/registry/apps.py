from django.apps import AppConfig


class RegistryConfig(AppConfig):
    name = "mergehub.registry"
    label = "registry"
    verbose_name = "Checkpoint registry"
