from django.apps import AppConfig


class PublishingConfig(AppConfig):
    name = "mergehub.publishing"
    label = "publishing"
    verbose_name = "Publishing"

    def ready(self):
        from mergehub.jobs import kinds

        from .pushing import HubPushRunner

        kinds.register(HubPushRunner)
