from django.apps import AppConfig


class EvaluationConfig(AppConfig):
    name = "mergehub.evaluation"
    label = "evaluation"
    verbose_name = "Evaluation"

    def ready(self):
        from mergehub.jobs import kinds

        from . import receivers  # noqa: F401  (evaluate a merge once it succeeds)
        from .evaluating import EvaluationRunner
        from .sweeping import SweepRunner
        from .training import FamilyRunner

        kinds.register(EvaluationRunner)
        kinds.register(SweepRunner)
        kinds.register(FamilyRunner)
