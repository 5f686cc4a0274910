"""django-q2 task entry points. Thin: load a row id, call a service or the runner, return."""
