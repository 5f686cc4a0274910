"""mergekit YAML in and out of the web app.

In: a mergekit config (YAML text, or the same as a mapping) whose ``model:`` and ``base_model:``
entries name the team's registered checkpoints, by name, id, path or Hub id (``owner/name``,
optionally ``@revision``), becomes the keyword arguments of ``services.preview_plan`` and
``services.create_run`` (method, base, experts, parameters, dtype, out_dtype). Only the team's
own checkpoints are looked at, so another team's name gets the same answer as a name that
exists nowhere.

Out: a run as mergekit YAML with the checkpoints' paths (mergekit and ``mergehub merge`` read
it as it is), their names in a leading comment and in a ``mergehub:`` section (which mergekit
ignores, and ``mergehub merge`` reads only for the sketch rank) with the budget, seed, block size
and sketch rank, so that submitting it again reproduces the run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Q

from mergehub.accounts.models import Team
from mergehub.engine import api as engine
from mergehub.engine.api import ConfigError
from mergehub.registry.models import Checkpoint

from . import services
from .models import MergeRun

MAX_CONFIG_CHARS = 100_000
SECTION = "mergehub"  # MergeHub's own notes in an exported config (the engine's config METADATA_KEYS)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def _not_yours(where: str, value: Any) -> str:
    return f"{where}: {_shown(value)} is not one of your team's checkpoints (by name, id, path or Hub id)"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "…'"


# --- in ---------------------------------------------------------------------------------------

def load_mapping(config: str | Mapping, *, field: str = "config") -> dict:
    """The config as a mapping: YAML text is read with yaml.safe_load's types only (duplicate
    keys and aliases refused); a mapping is taken as it is. Errors name the line."""
    if isinstance(config, (bytes, bytearray)):
        try:
            config = config.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError({field: "The config is not UTF-8 text."}) from None
    if isinstance(config, str):
        if not config.strip():
            raise ValidationError({field: "The config is empty: paste a mergekit YAML config."})
        if len(config) > MAX_CONFIG_CHARS:
            raise ValidationError({field: f"The config has {len(config)} characters; at most {MAX_CONFIG_CHARS}."})
        try:
            config = engine.load_yaml(config, allow_aliases=False)
        except ConfigError as err:
            raise ValidationError({field: str(err)}) from None
    if not isinstance(config, Mapping):
        raise ValidationError({field: "The config must be a mapping with merge_method, base_model and models; "
                                      f"got {type(config).__name__}."})
    return dict(config)


def section_of(mapping: Mapping) -> dict:
    """The ``mergehub:`` section of a config (empty when absent or not a mapping)."""
    section = mapping.get(SECTION)
    return dict(section) if isinstance(section, Mapping) else {}


def settings_from_config(config: str | Mapping, *, field: str = "config") -> dict:
    """What the ``mergehub:`` section of an exported config says about the run besides the merge
    itself: ``budget``, ``seed``, ``block_size``, ``measure_deviation`` and ``sketch_rank``, those
    present only."""
    section = section_of(load_mapping(config, field=field))
    found = {}
    for key in ("budget", "seed", "block_size", "measure_deviation", "sketch_rank"):
        value = section.get(key)
        if value is None or isinstance(value, (Mapping, list)):
            continue
        found[key] = str(value) if key == "budget" else value
    return found


def inputs_from_config(team: Team, config: str | Mapping, *, field: str = "config") -> dict:
    """Keyword arguments for ``services.preview_plan`` / ``services.create_run`` from a mergekit
    config whose models name the team's checkpoints. Every problem is a ValidationError keyed
    by ``field`` that names the entry at fault; nothing is written."""
    mapping = load_mapping(config, field=field)
    try:
        engine.check_config_keys(mapping)
        operator = engine.get_operator(_method(mapping))
    except ConfigError as err:
        raise ValidationError({field: str(err)}) from None
    hints = section_of(mapping).get("checkpoints")
    hints = hints if isinstance(hints, Mapping) else {}

    raw_base = mapping.get("base_model")
    if raw_base is None:
        raise ValidationError({field: "base_model is missing: MergeHub merges onto one of your team's base "
                                      "checkpoints; add base_model: NAME (for linear, karcher and passthrough "
                                      "the base counts as one more model)."})
    base = resolve_checkpoint(team, raw_base, where="base_model", field=field, role=Checkpoint.Role.BASE,
                              hint=hints.get("base_model"))
    experts = []
    model_hints = hints.get("models") if isinstance(hints.get("models"), list) else []
    for i, entry in enumerate(_model_entries(mapping, field)):
        hint = model_hints[i] if i < len(model_hints) else None
        ckpt = resolve_checkpoint(team, entry["model"], where=f"models[{i}].model", field=field,
                                  role=Checkpoint.Role.EXPERT, hint=hint)
        params = entry.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise ValidationError({field: f"models[{i}].parameters: write the parameters as a mapping of "
                                          f"name: value; got {_shown(params)}"})
        params = dict(params or {})
        if ckpt.pk == base.pk:
            # mergekit: a base listed under models is still just the base. Methods that take the
            # base as one more input would use its parameters there, which a run cannot store.
            if params and operator.base == "ignored":
                raise ValidationError({field: f"models[{i}]: {operator.name} takes the base as one more model, "
                                              "but MergeHub cannot keep the base's own parameters; set them "
                                              "under the global parameters instead."})
            continue
        experts.append((ckpt, params))
    parameters = mapping.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise ValidationError({field: f"parameters: write the parameters as a mapping of name: value; got "
                                      f"{_shown(parameters)}"})
    inputs = {"method": operator.name, "base": base, "experts": experts, "parameters": dict(parameters or {}),
              "dtype": mapping.get("dtype"), "out_dtype": mapping.get("out_dtype")}
    _check_with_engine(inputs, field)
    return inputs


def _method(mapping: Mapping) -> str:
    method = mapping.get("merge_method")
    if not isinstance(method, str) or not method:
        raise ConfigError("merge_method is missing: name the merge method, e.g. merge_method: ties")
    return method


def _model_entries(mapping: Mapping, field: str) -> list[Mapping]:
    models = mapping.get("models")
    if not isinstance(models, list) or not models:
        raise ValidationError({field: "models is missing or empty: list the experts to merge as "
                                      "- model: NAME (with optional parameters)."})
    for i, entry in enumerate(models):
        if not isinstance(entry, Mapping) or "model" not in entry:
            raise ValidationError({field: f"models[{i}]: write each model as a mapping {{model: NAME, "
                                          f"parameters: {{...}}}}; got {_shown(entry)}"})
        extra = [k for k in entry if k not in engine.MODEL_ENTRY_KEYS]
        if extra:
            raise ValidationError({field: f"models[{i}]: unknown key {_shown(extra[0])}; a model entry takes "
                                          f"only {', '.join(engine.MODEL_ENTRY_KEYS)}"})
    return models


def _check_with_engine(inputs: dict, field: str) -> None:
    """Parameter names, values, counts and dtypes, checked by the engine's own parser (the model
    paths are the checkpoints', not looked at here: create_run checks the files)."""
    checkpoints = [inputs["base"], *(c for c, _ in inputs["experts"])]
    if not inputs["experts"] or not all(c.path for c in checkpoints):
        return  # no expert, or one not downloaded yet: check_inputs says so in its words
    config = services.build_config(**inputs)
    try:
        engine.parse_config(services.engine_mapping(config), check_paths=False)
    except ConfigError as err:
        message = str(err)
        # the engine names models by path: say the names the user wrote (longest path first)
        for ckpt in sorted(checkpoints, key=lambda c: -len(c.path)):
            message = message.replace(ckpt.path, ckpt.name)
        raise ValidationError({field: message}) from None


def resolve_checkpoint(team: Team, value: Any, *, where: str, field: str = "config",
                       role: str | None = None, hint: Any = None) -> Checkpoint:
    """The team's checkpoint that ``value`` names: by name, then id, then path, then Hub id.
    When several match (two registrations of one directory), the one named by ``hint`` (the
    name an exported config recorded) wins, then the only one of ``role``."""
    candidates = _candidates(team, value)
    if not candidates:
        raise ValidationError({field: _not_yours(where, value)})
    if len(candidates) > 1 and isinstance(hint, str):
        candidates = [c for c in candidates if c.name == hint] or candidates
    if len(candidates) > 1 and role:
        candidates = [c for c in candidates if c.role == role] or candidates
    if len(candidates) > 1:
        names = ", ".join(sorted(c.name for c in candidates))
        raise ValidationError({field: f"{where}: {_shown(value)} matches several of your team's checkpoints "
                                      f"({names}); name one of them instead"})
    return candidates[0]


def _candidates(team: Team, value: Any) -> list[Checkpoint]:
    checkpoints = Checkpoint.objects.filter(team=team).order_by("pk")
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return list(checkpoints.filter(pk=value))
    if not isinstance(value, str) or not value.strip() or len(value) > 4096 or "\x00" in value:
        return []
    text = value.strip()
    by_id = Q(pk=int(text)) if text.isdigit() and len(text) <= 18 else None
    for query in (Q(name=text), by_id, _path_query(text),
                  _hub_query(text)):
        if query is not None:
            found = list(checkpoints.filter(query))
            if found:
                return found
    return []


def _path_query(text: str) -> Q:
    """The checkpoint whose directory this is: as registered (typed or resolved), or the same
    directory once ``~``, ``..`` and links are resolved."""
    spellings = {text}
    expanded = os.path.expanduser(text)
    if os.path.isabs(expanded):
        spellings |= {os.path.normpath(expanded), os.path.realpath(expanded)}
    return Q(path__in=spellings) | Q(local_path__in=spellings)


def _hub_query(text: str) -> Q | None:
    match = _HUB_ID.match(text)
    if match is None:
        return None
    query = Q(source=Checkpoint.Source.HF, hf_repo_id=match["repo"])
    revision = match["revision"]
    if revision is not None:
        same = Q(hf_revision=revision)
        if revision == "main":
            same |= Q(hf_revision="")
        query &= same
    return query


# --- out --------------------------------------------------------------------------------------

def config_yaml(run: MergeRun, *, model_refs: Mapping[str, str] | None = None) -> str:
    """The run as mergekit YAML: model paths as the checkpoints' directories, their names in a
    comment and in the ``mergehub:`` section with budget, seed, block size and sketch rank.
    ``inputs_from_config(run.team, config_yaml(run))`` gives the run's inputs back.

    ``model_refs`` ({directory: what to write instead}) replaces the server's directories, for a
    config shown outside MergeHub (a pushed model card names Hub ids or checkpoint names)."""
    stored = run.config or {}
    mapping = services.engine_mapping(stored)
    ids = stored.get("checkpoint_ids") or {}
    names = dict(Checkpoint.objects.filter(team_id=run.team_id, pk__in=list(ids.values()))
                 .values_list("pk", "name"))

    def name_of(path):
        return names.get(ids.get(path))

    def comment(text):
        return " ".join(str(text).split())

    base_name = name_of(mapping.get("base_model"))
    model_names = [name_of(entry.get("model")) for entry in mapping.get("models") or []]
    if model_refs:  # after the names: two directories may share one reference
        mapping = _with_model_refs(mapping, model_refs)
    section = {"run": run.pk, "budget": run.budget, "seed": run.seed, "block_size": run.block_size,
               "measure_deviation": run.measure_deviation,
               **({"sketch_rank": run.sketch_rank} if run.sketch_rank is not None else {}),
               "checkpoints": {"base_model": base_name, "models": model_names}}
    header = [
        f"# MergeHub run #{run.pk}: {comment(run.name)}",
        f"# base_model: {comment(base_name or '(deleted)')}; models: "
        + ", ".join(comment(n or "(deleted)") for n in model_names) + " (MergeHub checkpoint names)",
        f"# Merge it again: mergehub merge run-{run.pk}.yaml OUT_DIR --budget {comment(run.budget)} --seed {run.seed}"
        + (f" --block-size {run.block_size}" if run.block_size else "")
        + (f" --sketch-rank {run.sketch_rank}" if run.sketch_rank is not None else ""),
    ]
    # mergekit's key order, whatever order the database gave back (PostgreSQL's jsonb sorts keys)
    ordered = {key: mapping[key] for key in engine.CONFIG_KEYS if key in mapping}
    ordered.update((key, value) for key, value in mapping.items() if key not in ordered)
    return "\n".join(header) + "\n" + engine.dump_yaml({**ordered, SECTION: section})


def _with_model_refs(mapping: dict, refs: Mapping[str, str]) -> dict:
    """``mapping`` with its model directories (base_model, models[].model) replaced by ``refs``."""
    out = dict(mapping)
    if out.get("base_model") in refs:
        out["base_model"] = refs[out["base_model"]]
    if "models" in out:
        out["models"] = [{**entry, "model": refs.get(entry.get("model"), entry.get("model"))}
                         for entry in out["models"] or []]
    if "slices" in out:  # passthrough's layer ranges name their models per source
        out["slices"] = [{**piece, "sources": [{**source, "model": refs.get(source.get("model"), source.get("model"))}
                                               for source in piece.get("sources") or []]}
                         for piece in out["slices"] or []]
    return out


def config_filename(run: MergeRun) -> str:
    return f"run-{run.pk}.yaml"
