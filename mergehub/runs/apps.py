from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "mergehub.runs"
    label = "runs"
    verbose_name = "Merge runs"

    def ready(self):
        from mergehub.jobs import kinds

        from .runner import MergeRunner

        kinds.register(MergeRunner)
