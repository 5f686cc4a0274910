from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "mergehub.runs"
    label = "runs"
    verbose_name = "Merge runs"
