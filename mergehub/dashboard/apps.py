from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "mergehub.dashboard"
    label = "dashboard"
    verbose_name = "Dashboard"
