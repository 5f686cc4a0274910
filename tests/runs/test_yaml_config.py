"""mergekit YAML in and out: checkpoints named by name, id, path or Hub id; errors that name the
entry at fault (and tell nothing of other teams); a run's YAML round trip; the merge form's
import; the report's copy button and download."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from django.core.exceptions import ValidationError
from django.urls import reverse

from mergehub.engine import api as engine
from mergehub.registry.models import Checkpoint
from mergehub.runs import services
from mergehub.runs.yaml_config import config_yaml, inputs_from_config, settings_from_config
from tests.pages.conftest import ties_inputs

pytestmark = pytest.mark.django_db

NOT_YOURS = "is not one of your team's checkpoints (by name, id, path or Hub id)"


def ties_yaml(base="base", e1="expert-1", e2="expert-2", extra="") -> str:
    return (f"merge_method: ties\nbase_model: {base}\nmodels:\n"
            f"  - model: {e1}\n    parameters: {{weight: 1.0, density: 0.7}}\n"
            f"  - model: {e2}\n    parameters: {{weight: 0.5, density: 0.7}}\n{extra}")


def input_tag(html: str, name: str) -> str:
    match = re.search(rf'<input[^>]*name="{re.escape(name)}"[^>]*>', html)
    assert match, f"no input {name}"
    return match[0]


def message(error: ValidationError, field: str = "config") -> str:
    return " ".join(error.value.message_dict[field])


def expected_inputs(family) -> dict:
    inputs = ties_inputs(family)
    return {k: inputs[k] for k in ("method", "base", "experts", "parameters")} | {"dtype": None, "out_dtype": None}


# --- in ---------------------------------------------------------------------------------------

def test_names_resolve_to_the_teams_checkpoints(registered_family, acme):
    assert inputs_from_config(acme, ties_yaml()) == expected_inputs(registered_family)


def test_ids_paths_and_mappings_resolve_too(registered_family, acme):
    base, (e1, e2) = registered_family["base"], registered_family["experts"]
    by_id = inputs_from_config(acme, ties_yaml(base=base.pk, e1=e1.pk, e2=f"'{e2.pk}'"))
    by_path = inputs_from_config(acme, ties_yaml(base=base.path, e1=e1.local_path, e2=e2.path + "/"))
    as_mapping = inputs_from_config(acme, yaml.safe_load(ties_yaml()))
    assert by_id == by_path == as_mapping == expected_inputs(registered_family)


def test_hub_ids_resolve_with_or_without_a_revision(registered_family, acme):
    e1, e2 = registered_family["experts"]
    Checkpoint.objects.filter(pk=e2.pk).update(source=Checkpoint.Source.HF, hf_repo_id="acme-org/tiny-expert",
                                               hf_revision="v1", local_path="")
    for ref in ("acme-org/tiny-expert", "acme-org/tiny-expert@v1"):
        inputs = inputs_from_config(acme, ties_yaml(e2=ref))
        assert [c for c, _ in inputs["experts"]] == [e1, e2]
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, ties_yaml(e2="acme-org/tiny-expert@v2"))
    assert message(error) == f"models[1].model: 'acme-org/tiny-expert@v2' {NOT_YOURS}"


def test_an_unknown_model_is_named_with_its_entry(registered_family, acme):
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, ties_yaml(e2="nope"), field="yaml")
    assert message(error, "yaml") == f"models[1].model: 'nope' {NOT_YOURS}"
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, ties_yaml(base="/no/such/dir"))
    assert message(error) == f"base_model: '/no/such/dir' {NOT_YOURS}"


def test_another_teams_checkpoint_reads_like_one_that_does_not_exist(registered_family, family, acme, rival,
                                                                     mallory):
    from mergehub.registry.services import register_checkpoint

    theirs = register_checkpoint(team=rival, user=mallory, name="rival-base", role="base",
                                 family_name="rival-family", local_path=str(family["base"]))
    for ref, shown in (("rival-base", "'rival-base'"), (theirs.pk, str(theirs.pk))):
        with pytest.raises(ValidationError) as error:
            inputs_from_config(acme, ties_yaml(e1=ref))
        assert message(error) == f"models[0].model: {shown} {NOT_YOURS}"
    with pytest.raises(ValidationError) as missing:
        inputs_from_config(acme, ties_yaml(e1=10**6))
    assert message(missing) == f"models[0].model: {10**6} {NOT_YOURS}"
    # and rival, given acme's names, gets the same answer
    with pytest.raises(ValidationError) as error:
        inputs_from_config(rival, ties_yaml(base="rival-base"))
    assert message(error) == f"models[0].model: 'expert-1' {NOT_YOURS}"


def test_bad_yaml_names_its_line(registered_family, acme):
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, "merge_method: ties\nbase_model: base\nmodels: [\n  - model: x\n")
    assert "invalid YAML at line 4" in message(error)
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, "merge_method: ties\nmerge_method: linear\n")
    assert "duplicate key 'merge_method' at line 2" in message(error)
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, "a: &x [1, 2]\nb: *x\n")
    assert "aliases" in message(error)
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, "- just a list")
    assert "must be a mapping" in message(error)


@pytest.mark.parametrize("extra, expected", [
    ("slices: []\n", "slices are not supported yet; list models instead"),
    ("tokenizer_source: base\n", "tokenizer_source is not supported"),
    ("merge_methods: ties\n", "unknown key 'merge_methods'"),
    ("parameters: {lambda: 1.0, densty: 0.5}\n", "unknown parameter 'densty' for ties"),
    ("dtype: float8\n", "unknown dtype 'float8'"),
])
def test_what_the_engine_refuses_is_its_own_message(registered_family, acme, extra, expected):
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, ties_yaml(extra=extra))
    assert expected in message(error)


def test_engine_messages_name_checkpoints_not_paths(registered_family, acme):
    text = ties_yaml().replace("density: 0.7}\n  - model: expert-2", "density: 7}\n  - model: expert-2")
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, text)
    assert "expert-1" in message(error) and registered_family["experts"][0].path not in message(error)


def test_a_base_listed_under_models_is_just_the_base(registered_family, acme):
    text = ties_yaml().replace("models:\n", "models:\n  - model: base\n")
    assert inputs_from_config(acme, text) == expected_inputs(registered_family)
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, "merge_method: ties\nmodels: [{model: expert-1}]\n")
    assert "base_model is missing" in message(error)


def test_two_registrations_of_one_directory_need_a_name(registered_family, acme, alice):
    e2 = registered_family["experts"][1]
    twin = Checkpoint.objects.create(team=acme, family=e2.family, name="expert-2-again", role="expert",
                                     local_path=e2.local_path, path=e2.path, index_status="ready")
    with pytest.raises(ValidationError) as error:
        inputs_from_config(acme, ties_yaml(e2=e2.path))
    assert "matches several of your team's checkpoints (expert-2, expert-2-again)" in message(error)
    hinted = ties_yaml(e2=e2.path, extra="mergehub:\n  checkpoints: {models: [expert-1, expert-2-again]}\n")
    assert [c for c, _ in inputs_from_config(acme, hinted)["experts"]][1] == twin


# --- out and back -----------------------------------------------------------------------------

def test_a_runs_yaml_round_trips(registered_family, alice, acme, tmp_path):
    base, (e1, e2) = registered_family["base"], registered_family["experts"]
    inputs = {"method": "ties", "base": base,
              "experts": [(e1, {"weight": [0.2, 0.8], "density": 0.7}),
                          (e2, {"weight": [{"filter": "mlp", "value": 0.7}, {"filter": None, "value": 0.3}],
                                "density": 0.5})],
              "parameters": {"lambda": 0.9, "normalize": False}, "dtype": "float32", "out_dtype": "bfloat16"}
    run = services.create_run(user=alice, team=acme, name="round\ntrip", budget="0.5", seed=7, **inputs)
    text = config_yaml(run)
    assert inputs_from_config(acme, text) == inputs
    assert settings_from_config(text) == {"budget": "0.5", "seed": 7, "block_size": run.block_size,
                                          "measure_deviation": False}
    # the checkpoint names are in a comment and in the mergehub section; the models are paths
    assert text.startswith(f"# MergeHub run #{run.pk}: round trip\n# base_model: base; models: expert-1, expert-2")
    mapping = yaml.safe_load(text)
    assert mapping["base_model"] == base.path and [m["model"] for m in mapping["models"]] == [e1.path, e2.path]
    assert mapping["mergehub"]["checkpoints"] == {"base_model": "base", "models": ["expert-1", "expert-2"]}
    # the engine (mergehub merge) reads the file as it is: paths, no MergeHub bookkeeping
    path = tmp_path / "run.yaml"
    path.write_text(text)
    parsed = engine.load_config(path)
    assert parsed.base_model.path.as_posix() == base.path and "checkpoint_ids" not in parsed.raw
    # and planning the imported inputs again (with the section's budget, seed, block size) gives the same plan
    noted = settings_from_config(text)
    again = services.plan_config(services.build_config(**inputs_from_config(acme, text)), noted["budget"],
                                 noted["block_size"], noted["seed"])
    assert again["plan_digest"] == run.plan["plan_digest"]


# --- the merge form's import ------------------------------------------------------------------

def test_import_fills_the_merge_form(registered_family, carol_client):
    base, (e1, e2) = registered_family["base"], registered_family["experts"]
    text = ties_yaml(extra="parameters: {lambda: 0.8, normalize: false}\nout_dtype: bf16\n"
                           "mergehub: {budget: '0.25', seed: 3, sketch_rank: 0}\n")
    response = carol_client.post(reverse("runs:import_yaml"), {"yaml": text})
    assert response.status_code == 302
    url = urlsplit(response["Location"])
    assert url.path == reverse("runs:new")
    query = parse_qs(url.query, keep_blank_values=True)
    assert query["method"] == ["ties"] and query["base"] == [str(base.pk)]
    assert query[f"expert_{e1.pk}__use"] == ["on"] and query[f"expert_{e2.pk}__weight"] == ["0.5"]
    assert query["param__lambda"] == ["0.8"] and query["param__normalize"] == [""]
    assert query["out_dtype"] == ["bfloat16"] and query["budget"] == ["0.25"] and query["seed"] == ["3"]
    assert query["sketch_rank"] == ["0"]

    page = carol_client.get(response["Location"])
    form = page.context["form"]
    assert form.chosen_base == base and form.operator.name == "ties"
    html = page.content.decode()
    assert "checked" in input_tag(html, f"expert_{e1.pk}__use")
    assert 'value="0.5"' in input_tag(html, f"expert_{e2.pk}__weight")
    assert "checked" not in input_tag(html, "param__normalize")
    assert "Imported the config: ties of 2 experts onto base" in html
    # the imported form posts as it shows: one run with these inputs
    assert form.initial["budget"] == "0.25" and form.initial["param__normalize"] == ""
    assert 'value="0"' in input_tag(html, "sketch_rank")


def test_import_says_what_the_form_cannot_show(registered_family, carol_client):
    text = ties_yaml().replace("{weight: 1.0, density: 0.7}", "{weight: [0.2, 0.8], density: 0.7}")
    response = carol_client.post(reverse("runs:import_yaml"), {"yaml": text}, follow=True)
    html = response.content.decode()
    assert "Not shown in the form: weight of expert-1" in html
    assert "not representable in the form" in html and "API" in html and "CLI" in html


def test_import_errors_show_on_the_page(registered_family, carol_client):
    response = carol_client.post(reverse("runs:import_yaml"), {"yaml": ties_yaml(e1="nope")})
    assert response.status_code == 200
    assert f"models[0].model: &#x27;nope&#x27; {NOT_YOURS}".replace("'", "&#x27;") in response.content.decode()
    response = carol_client.post(reverse("runs:import_yaml"), {"yaml": "models: [\n"})
    assert "invalid YAML at line 2" in response.content.decode()
    response = carol_client.post(reverse("runs:import_yaml"), {"yaml": ties_yaml(extra="slices: []\n")})
    assert "slices are not supported yet" in response.content.decode()


def test_the_report_offers_its_yaml(registered_family, alice, acme, bob_client, mallory_client):
    run = services.create_run(user=alice, team=acme, name="report yaml", **ties_inputs(registered_family))
    run.refresh_from_db()  # the config as the database gives it back (jsonb reorders keys)
    html = bob_client.get(reverse("runs:detail", args=[run.pk])).content.decode()
    assert 'data-copy="run-yaml"' in html and 'id="run-yaml"' in html
    assert f'href="{reverse("runs:config_yaml", args=[run.pk])}" download' in html
    assert "merge_method: ties" in html and "onclick" not in html

    response = bob_client.get(reverse("runs:config_yaml", args=[run.pk]))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/yaml")
    assert response["Content-Disposition"] == f'attachment; filename="run-{run.pk}.yaml"'
    assert response.content.decode() == config_yaml(run)
    assert mallory_client.get(reverse("runs:config_yaml", args=[run.pk])).status_code == 404


def test_the_copy_button_is_wired_in_app_js():
    from django.conf import settings

    source = (settings.BASE_DIR / "static" / "js" / "app.js").read_text()
    assert "[data-copy]" in source and "clipboard" in source


def test_model_refs_replace_every_model_directory():
    from mergehub.runs.yaml_config import _with_model_refs

    mapping = {"merge_method": "passthrough", "base_model": "/srv/base",
               "models": [{"model": "/srv/e1", "parameters": {"weight": 1.0}}, {"model": "/srv/other"}],
               "slices": [{"sources": [{"model": "/srv/e1", "layer_range": [0, 2]}]}]}
    out = _with_model_refs(mapping, {"/srv/base": "org/base", "/srv/e1": "expert-1"})
    assert out["base_model"] == "org/base"
    assert [m["model"] for m in out["models"]] == ["expert-1", "/srv/other"]  # unknown paths stay
    assert out["models"][0]["parameters"] == {"weight": 1.0}
    assert out["slices"] == [{"sources": [{"model": "expert-1", "layer_range": [0, 2]}]}]
    assert mapping["base_model"] == "/srv/base"  # the run's own config is untouched
