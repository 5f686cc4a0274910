from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "mergehub.audit"
    label = "audit"
    verbose_name = "Audit log"
