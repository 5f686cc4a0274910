from django.apps import AppConfig


class WebConfig(AppConfig):
    name = "mergehub.web"
    label = "web"
    verbose_name = "Web pages"
