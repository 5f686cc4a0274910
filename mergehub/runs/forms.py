"""The merge form. Its fields follow the chosen operator: the engine's operator registry says
which parameters exist, whether they are shared ("global") or per expert ("model"), their
type, default, bounds and help. Nothing here lists parameters by hand.

Field names: ``param__<name>`` for a shared parameter; ``expert_<id>__use`` (include this
expert) and ``expert_<id>__<name>`` for an expert's own parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from mergehub.engine import api as engine
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import block_size as default_block_size

from .services import check_sketch_rank

DEFAULT_METHOD = "ties"
DTYPES = [("float32", "float32"), ("bfloat16", "bfloat16"), ("float16", "float16")]

# Values the form proposes for parameters mergekit requires; the engine still requires them
# (a config without t is an error), only the form starts from these.
FORM_DEFAULTS = {"slerp": {"t": 0.5}}
# Methods whose expert weights are relative shares (the engine divides by their sum).
NORMALISING_PARAMS = ("normalize", "normalize_weights")
RELATIVE_WEIGHTS = {"nuslerp"}  # t = w₁ / (w₀ + w₁)


def operator_names() -> list[str]:
    return sorted(engine.operator_specs())


def sketch_rank_defaults() -> str:
    """Each method's default sketch rank, in words (the form's and the API's help say it)."""
    off = sorted(name for name, op in engine.operator_specs().items() if not op.sketches_by_default)
    return (f"rank {engine.DEFAULT_SKETCH_RANK} for every method" if not off
            else f"rank {engine.DEFAULT_SKETCH_RANK}, except off for {', '.join(off)}")


def sketch_rank_help() -> str:
    """The sketch rank field's help: what a sketch is, and each method's default."""
    return ("Low-rank sketches of each expert's delta, made when the expert is indexed, that a budgeted plan "
            "may read in place of exact blocks it leaves out; their bytes count against the budget. "
            f"Blank: the method's default ({sketch_rank_defaults()}). 0: off, exact blocks only.")


def param_field(param: engine.OperatorParam, *, required: bool) -> forms.Field:
    """A form field for one operator parameter: its type, bounds, default and help."""
    default = None if param.default is engine.REQUIRED else param.default
    options: dict[str, Any] = {"label": param.name, "help_text": param.help, "initial": default}
    if param.kind is bool:
        return forms.BooleanField(required=False, **options)
    bounds = {"min_value": param.minimum, "max_value": param.maximum, "required": required}
    if param.kind is int:
        return forms.IntegerField(**bounds, **options)
    return forms.FloatField(**bounds, widget=forms.NumberInput(attrs={"step": "any"}), **options)


def default_weight(operator: engine.Operator, experts: int) -> float:
    """The weight the form proposes for each expert: 1.0 where the method divides by the sum
    of the weights (equal shares), else 1/n, so that n task vectors add up to their average."""
    relative = operator.name in RELATIVE_WEIGHTS or any(
        p.name in NORMALISING_PARAMS and p.default is True for p in operator.params)
    return 1.0 if relative or experts <= 1 else round(1.0 / experts, 4)


@dataclass
class ExpertRow:
    """One candidate expert in the form: its include box and its per-model parameter fields."""

    checkpoint: Checkpoint
    # None when the expert cannot be used (not indexed); its radio button (a BoundWidget) when
    # the method takes a single expert, else its checkbox
    use: forms.BoundField | Any | None
    params: list[forms.BoundField]


class MergeForm(forms.Form):
    name = forms.CharField(max_length=200, required=False,
                           help_text="Optional; defaults to the method, expert count and budget.")
    method = forms.ChoiceField(label="Merge method", help_text="mergekit's merge_method.")
    base = forms.ModelChoiceField(queryset=Checkpoint.objects.none(), label="Base model",
                                  empty_label=None,
                                  help_text="Experts are the indexed fine-tunes of this base's family.")
    budget = forms.CharField(
        max_length=50, initial="1.0", label="Expert-read budget",
        help_text="A fraction of the full expert bytes in (0, 1], e.g. 0.25, or a size such as 512MB "
                  "or 2GiB. Base reads and output writes are not budgeted.")
    seed = forms.IntegerField(min_value=0, initial=0, help_text="Seeds random operators (DARE, DELLA).")
    sketch_rank = forms.IntegerField(
        required=False, label="Sketch rank",
        widget=forms.NumberInput(attrs={"min": 0, "step": 1, "placeholder": "method's default"}))  # max: __init__
    dtype = forms.ChoiceField(choices=[("", "inputs' dtype (promote)")] + DTYPES, required=False,
                              label="Working dtype", help_text="dtype the inputs are cast to for the merge.")
    out_dtype = forms.ChoiceField(choices=[("", "same as the base")] + DTYPES, required=False,
                                  label="Output dtype")
    queue = forms.ChoiceField(
        required=False, label="Worker queue",
        help_text="gpu: a worker with CUDA (MERGEHUB_QUEUE=gpu) takes it; cpu workers never do.")
    measure_deviation = forms.BooleanField(
        required=False, label="Measure deviation from the full-read merge",
        help_text="Also computes the unbudgeted merge to report ‖Δ_A − Δ_full‖; reads every expert byte.")
    evaluate_tasks = forms.MultipleChoiceField(
        required=False, widget=forms.CheckboxSelectMultiple, label="Evaluate after the merge on",
        help_text="Scores the merged model, its base and its experts on these tasks once the merge succeeds.")
    sweep_budgets = forms.CharField(
        required=False, max_length=500, initial="0.05, 0.1, 0.25, 0.5, 1", label="Budgets to sweep",
        help_text="For “Sweep budgets”: the deviation of each budget's merge in one pass; with tasks "
                  "chosen above, each budget's merge is also written and scored.")

    def __init__(self, data=None, *, bases, experts_for, tasks=(), initial=None, **kwargs):
        """``bases``: the team's base checkpoints; ``experts_for(base)``: that base's experts;
        ``tasks``: the team's evaluation tasks."""
        super().__init__(data, initial=initial, **kwargs)
        self.fields["sketch_rank"].help_text = sketch_rank_help()
        self.fields["sketch_rank"].widget.attrs["max"] = engine.MAX_SKETCH_RANK
        self.tasks = list(tasks)
        self.fields["evaluate_tasks"].choices = [(str(t.pk), t.name) for t in self.tasks]
        self.fields["method"].choices = [(n, n) for n in operator_names()]
        self.fields["queue"].choices = [(q, q) for q in settings.MERGEHUB_QUEUES]
        self.fields["queue"].initial = settings.MERGEHUB_QUEUES[0]
        self.fields["base"].queryset = bases
        self.operator = self._chosen_operator()
        self.chosen_base = self._chosen_base(bases)
        self.candidates = list(experts_for(self.chosen_base)) if self.chosen_base else []
        self.global_params = [p for p in self.operator.params if p.scope == "global"]
        self.model_params = [p for p in self.operator.params if p.scope == "model"]
        proposed = FORM_DEFAULTS.get(self.operator.name, {})
        for p in self.global_params:
            field = self.fields[f"param__{p.name}"] = param_field(p, required=p.default is engine.REQUIRED)
            if p.name in proposed:
                field.initial = proposed[p.name]
        ready = [c for c in self.candidates if c.is_ready]
        # A method that takes one expert (slerp: the base and one model) offers radio buttons.
        self.single_expert = self.operator.max_inputs == 1
        if self.single_expert:
            self.fields["expert"] = forms.ChoiceField(
                required=False, label="Expert", widget=forms.RadioSelect,
                choices=[(str(c.pk), c.name) for c in ready], initial=self._initial_expert(ready))
        for ckpt in ready:
            if not self.single_expert:
                self.fields[f"expert_{ckpt.pk}__use"] = forms.BooleanField(
                    required=False, label=ckpt.name, initial=self._raw("expert") == str(ckpt.pk))
            for p in self.model_params:
                # Required only for experts that are included: checked in clean().
                field = self.fields[f"expert_{ckpt.pk}__{p.name}"] = param_field(p, required=False)
                if p.name == "weight" and p.default is engine.REQUIRED:
                    field.initial = default_weight(self.operator, len(ready))

    # --- what the user chose (bound data, else initial, else a default) ----------------------

    def _raw(self, name: str):
        if self.is_bound:
            return self.data.get(self.add_prefix(name))
        return (self.initial or {}).get(name)

    def _initial_expert(self, ready) -> str | None:
        """The radio button to check on an unbound form: the first expert ticked in the query
        (a switch from a method with checkboxes, an imported config)."""
        ticked = forms.BooleanField(required=False).to_python
        return next((str(c.pk) for c in ready if ticked(self._raw(f"expert_{c.pk}__use"))), None)

    def _chosen_operator(self) -> engine.Operator:
        names = operator_names()
        method = self._raw("method")
        if method not in names:
            method = DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]
            if not self.is_bound:
                self.initial["method"] = method
        return engine.get_operator(method)

    def _chosen_base(self, bases) -> Checkpoint | None:
        raw = self._raw("base")
        base = None
        if raw not in (None, ""):
            try:
                base = bases.filter(pk=int(getattr(raw, "pk", raw))).first()
            except (TypeError, ValueError):
                base = None
        return base or (None if self.is_bound else bases.first())

    # --- rendering helpers -------------------------------------------------------------------

    def global_fields(self) -> list[forms.BoundField]:
        return [self[f"param__{p.name}"] for p in self.global_params]

    def expert_rows(self) -> list[ExpertRow]:
        rows = []
        radios = {w.data["value"]: w for w in self["expert"].subwidgets} if self.single_expert else {}
        for ckpt in self.candidates:
            if ckpt.is_ready:
                use = radios[str(ckpt.pk)] if self.single_expert else self[f"expert_{ckpt.pk}__use"]
                rows.append(ExpertRow(ckpt, use, [self[f"expert_{ckpt.pk}__{p.name}"] for p in self.model_params]))
            else:
                rows.append(ExpertRow(ckpt, None, []))
        return rows

    # --- validation --------------------------------------------------------------------------

    def clean_budget(self):
        return self.cleaned_data["budget"].strip()

    def clean_sketch_rank(self):
        """Blank: None (the method's default); else the engine's rule (services.check_sketch_rank)."""
        try:
            return check_sketch_rank(self.cleaned_data.get("sketch_rank"))
        except ValidationError as error:
            raise ValidationError(error.message_dict["sketch_rank"]) from None

    def _posted_expert_ids(self) -> list[str]:
        """The ids of every ``expert_<id>__use`` box the POST ticks, fields or not."""
        prefix, suffix = self.add_prefix("expert_"), "__use"
        ticked = forms.BooleanField(required=False).to_python
        return [key[len(prefix):-len(suffix)] for key in self.data
                if key.startswith(prefix) and key.endswith(suffix) and ticked(self.data.get(key))]

    def clean(self):
        data = super().clean()
        # Fields exist only for this team's indexed experts of the chosen base, so any other id
        # (another team's, another family's, none at all) would be dropped without a word: say
        # so instead, in words that do not tell whether the id exists elsewhere.
        usable = {str(c.pk): c for c in self.candidates if c.is_ready}
        for raw in self._posted_expert_ids():
            if raw in usable:
                continue
            ckpt = next((c for c in self.candidates if str(c.pk) == raw), None)
            if ckpt is not None:
                self.add_error(None, f"{ckpt.name} is not indexed yet, so it cannot be merged.")
            else:
                self.add_error(None, f"Expert #{raw[:20]} is not one of your team's indexed experts "
                                     "for the chosen base.")
        if self.single_expert:  # the radio button, or boxes posted as for other methods (the API's form data)
            picked = {data.get("expert")} | set(self._posted_expert_ids())
            chosen = [c for c in self.candidates if c.is_ready and str(c.pk) in picked]
        else:
            chosen = [c for c in self.candidates if data.get(f"expert_{c.pk}__use")]
        if self.chosen_base is not None and not chosen:
            self.add_error(None, "Choose at least one expert.")
        for ckpt in chosen:
            for p in self.model_params:
                key = f"expert_{ckpt.pk}__{p.name}"
                if p.default is engine.REQUIRED and data.get(key) is None and key not in self.errors:
                    self.add_error(key, f"Enter {p.name} for {ckpt.name}.")
        self.chosen_experts = chosen
        return data

    def _params(self, prefix: str, params) -> dict[str, Any]:
        values = {}
        for p in params:
            value = self.cleaned_data.get(prefix + p.name)
            if value is not None:  # blank number: the operator's default applies
                values[p.name] = value
        return values

    def merge_inputs(self) -> dict[str, Any]:
        """Keyword arguments shared by runs.services.preview_plan and create_run."""
        return {
            "method": self.operator.name,
            "base": self.cleaned_data["base"],
            "experts": [(c, self._params(f"expert_{c.pk}__", self.model_params)) for c in self.chosen_experts],
            "parameters": self._params("param__", self.global_params),
            "budget": self.cleaned_data["budget"],
            "dtype": self.cleaned_data.get("dtype") or None,
            "out_dtype": self.cleaned_data.get("out_dtype") or None,
            "sketch_rank": self.cleaned_data.get("sketch_rank"),
        }

    def chosen_tasks(self) -> list:
        chosen = set(self.cleaned_data.get("evaluate_tasks") or [])
        return [t for t in self.tasks if str(t.pk) in chosen]

    def run_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for runs.services.create_run."""
        return {**self.merge_inputs(), "name": self.cleaned_data.get("name", ""),
                "seed": self.cleaned_data["seed"], "measure_deviation": self.cleaned_data["measure_deviation"],
                "queue": self.cleaned_data.get("queue") or None, "evaluate_tasks": self.chosen_tasks()}

    def sweep_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for evaluation.sweeps.create_sweep (the budget field is not used)."""
        inputs = {k: v for k, v in self.merge_inputs().items() if k != "budget"}
        return {**inputs, "name": self.cleaned_data.get("name", ""), "budgets": self.cleaned_data.get("sweep_budgets", ""),
                "seed": self.cleaned_data["seed"], "queue": self.cleaned_data.get("queue") or None,
                "tasks": self.chosen_tasks()}


def initial_from_query(query) -> dict[str, Any]:
    """A QueryDict as form ``initial`` (used to re-render the operator fields after a change
    without showing validation errors for fields the user has not filled yet)."""
    return {key: values if len(values) > 1 else values[-1]
            for key, values in query.lists() if key != "csrfmiddlewaretoken" and values}


# --- an imported mergekit config as the form's initial values ---------------------------------

class ImportConfigForm(forms.Form):
    """A pasted mergekit config (runs.yaml_config.inputs_from_config reads it)."""

    yaml = forms.CharField(
        label="mergekit YAML", max_length=100_000, strip=False,
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "class": "mono",
                                     "placeholder": "merge_method: ties\nbase_model: my-base\nmodels:\n  - model: my-expert\n"
                                                    "    parameters: {weight: 1.0, density: 0.7}"}),
        help_text="models and base_model name your team's checkpoints by name, id, path or Hub id "
                  "(owner/name, optionally @revision). A run's exported YAML works as it is.")


def _form_value(param: engine.OperatorParam, value: Any) -> str | None:
    """A parameter value as the form field's query value; None when the form cannot show it
    (a gradient or a filter list, which only the API and the CLI take)."""
    if param.kind is bool:
        if isinstance(value, str) and value.strip().lower() in {"true", "yes", "on", "1", "false", "no", "off", "0"}:
            value = value.strip().lower() in {"true", "yes", "on", "1"}
        if isinstance(value, (bool, int)) and not isinstance(value, float) and value in (0, 1):
            return "on" if value else ""  # an empty value renders the box unticked
        return None
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        try:
            float(value.strip())
        except ValueError:
            return None
        return value.strip()
    return None


def import_query(inputs: dict[str, Any], run_settings: dict[str, Any] | None = None) -> tuple[str, list[str]]:
    """The merge form's query string (read back by ``initial_from_query``) for ``inputs`` from
    runs.yaml_config.inputs_from_config, and what the form cannot show. A per-model parameter
    set globally is filled in for every expert without its own value (the same merge)."""
    operator = engine.get_operator(inputs["method"])
    global_params = {p.name: p for p in operator.params if p.scope == "global"}
    model_params = [p for p in operator.params if p.scope == "model"]
    shared = inputs.get("parameters") or {}
    query: list[tuple[str, str]] = [("method", operator.name), ("base", str(inputs["base"].pk))]
    hidden: list[str] = []
    for name, value in shared.items():
        if name in global_params:
            shown = _form_value(global_params[name], value)
            if shown is None:
                hidden.append(f"parameters.{name}")
            else:
                query.append((f"param__{name}", shown))
    for ckpt, params in inputs["experts"]:
        query.append((f"expert_{ckpt.pk}__use", "on"))
        for param in model_params:
            value = params.get(param.name, shared.get(param.name))
            if value is None:
                continue
            shown = _form_value(param, value)
            if shown is None:
                hidden.append(f"{param.name} of {ckpt.name}")
            else:
                query.append((f"expert_{ckpt.pk}__{param.name}", shown))
    form_dtypes = {value for value, _ in DTYPES}
    for key in ("dtype", "out_dtype"):
        if inputs.get(key) is None:
            continue
        name = engine.CONFIG_DTYPE_NAMES.get(engine.parse_config_dtype(inputs[key], key))
        if name in form_dtypes:
            query.append((key, name))
        else:
            hidden.append(f"{key} {inputs[key]}")
    notes = []
    if hidden:
        notes.append(f"Not shown in the form: {', '.join(hidden)}. Gradients, filter lists and these dtypes are "
                     "not representable in the form; submit the config through the API (POST /api/v1/runs/) or "
                     "the CLI (mergehub merge) to merge with them. The form uses the operator's defaults instead.")
    extra = run_settings or {}
    if extra.get("budget") not in (None, ""):
        query.append(("budget", str(extra["budget"])))
    if isinstance(extra.get("seed"), int) and not isinstance(extra.get("seed"), bool):
        query.append(("seed", str(extra["seed"])))
    if extra.get("measure_deviation") is True:
        query.append(("measure_deviation", "on"))
    if isinstance(extra.get("sketch_rank"), int) and not isinstance(extra.get("sketch_rank"), bool):
        query.append(("sketch_rank", str(extra["sketch_rank"])))
    if extra.get("block_size") not in (None, "") and str(extra["block_size"]) != str(default_block_size()):
        notes.append(f"The config's block size ({extra['block_size']}) is not a form field; the form merges with "
                     f"this site's default ({default_block_size()} bytes). Submit it through the API to keep it.")
    return urlencode(query), notes
