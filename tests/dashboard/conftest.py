from tests.pages.conftest import queued_run, succeeded_run  # noqa: F401  (fixtures)
