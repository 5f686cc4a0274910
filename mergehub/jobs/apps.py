from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "mergehub.jobs"
    label = "jobs"
    verbose_name = "Background jobs"
