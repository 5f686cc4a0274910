"""Forms for evaluation pages: register a task, choose tasks to evaluate on."""

from __future__ import annotations

from django import forms
from django.conf import settings

from .models import EvalTask


class RegisterTaskForm(forms.Form):
    name = forms.CharField(max_length=100)
    description = forms.CharField(max_length=300, required=False)
    path = forms.CharField(required=False, max_length=4096, label="File under your team's roots",
                           help_text="An absolute path (JSONL or text) under one of your team's roots; or upload below.")
    upload = forms.FileField(required=False, label="Or upload a file",
                             help_text=".jsonl (prompt/target or prompt/choices/answer) or .txt (perplexity).")
    kind = forms.ChoiceField(choices=[("auto", "detect from the file")] + EvalTask.Kind.choices, initial="auto")
    max_new_tokens = forms.IntegerField(required=False, min_value=1, max_value=1024, label="Max new tokens",
                                        help_text="Exact-match tasks: tokens decoded at most (default 32).")
    stop = forms.CharField(required=False, max_length=20, strip=False, label="Stop string",
                           help_text=r"Exact-match tasks: decoding stops here or at end of sequence "
                                     r"(default a newline; write \n for a newline).")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not settings.MERGEHUB_ALLOW_LM_EVAL_TASKS:
            self.fields["kind"].choices = [c for c in self.fields["kind"].choices if c[0] != EvalTask.Kind.LM_EVAL]
        self.fields["upload"].help_text += f" At most {settings.MERGEHUB_TASK_MAX_BYTES // (1024 * 1024)} MiB."

    def service_kwargs(self) -> dict:
        data = self.cleaned_data
        task_settings = {}
        if data.get("max_new_tokens"):
            task_settings["max_new_tokens"] = data["max_new_tokens"]
        if data.get("stop"):
            task_settings["stop"] = data["stop"].replace("\\n", "\n").replace("\\t", "\t")
        return {"name": data["name"], "description": data.get("description", ""), "path": data.get("path") or None,
                "upload": data.get("upload"), "kind": data["kind"], "task_settings": task_settings or None}


class ChooseTasksForm(forms.Form):
    """Which of the team's tasks to score a model on."""

    tasks = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, label="Tasks")

    def __init__(self, *args, tasks, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tasks"].choices = [(str(t.pk), t.name) for t in tasks]
        self.fields["tasks"].initial = [str(t.pk) for t in tasks]
