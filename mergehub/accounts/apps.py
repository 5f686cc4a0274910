from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mergehub.accounts"
    label = "accounts"
    verbose_name = "Teams and members"
