from django.apps import AppConfig


class ReviewsConfig(AppConfig):
    name = "mergehub.reviews"
    label = "reviews"
    verbose_name = "Reviews"
