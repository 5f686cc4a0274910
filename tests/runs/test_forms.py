"""The merge form: values it proposes (slerp's t, expert weights) and the single-expert choice."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from mergehub.engine.api import get_operator
from mergehub.registry.models import Checkpoint
from mergehub.runs.forms import MergeForm, default_weight

pytestmark = pytest.mark.django_db


def _form(registered_family, data=None, initial=None):
    base = registered_family["base"]
    bases = Checkpoint.objects.filter(pk=base.pk)
    experts = Checkpoint.objects.filter(pk__in=[e.pk for e in registered_family["experts"]]).order_by("name")
    return MergeForm(data, bases=bases, experts_for=lambda _base: experts, initial=initial)


def _slerp_post(registered_family, **overrides) -> dict:
    data = {"method": "slerp", "base": str(registered_family["base"].pk), "budget": "1.0", "seed": "0",
            "param__t": "0.3"}
    data.update(overrides)
    return data


def test_slerps_t_starts_at_one_half_but_stays_required(registered_family):
    form = _form(registered_family, initial={"method": "slerp"})
    assert form["param__t"].value() == 0.5 and form.fields["param__t"].required
    e1 = registered_family["experts"][0]
    blank = _form(registered_family, data=_slerp_post(registered_family, param__t="", expert=str(e1.pk)))
    assert not blank.is_valid() and "param__t" in blank.errors  # the engine's semantics: no default
    # other methods' required parameters get no proposed value
    assert _form(registered_family, initial={"method": "nearswap"})["param__t"].value() is None


def test_a_single_expert_method_offers_radio_buttons(registered_family):
    e1, e2 = registered_family["experts"]
    form = _form(registered_family, initial={"method": "slerp"})
    assert form.single_expert and f"expert_{e1.pk}__use" not in form.fields
    html = str(form["expert"])
    assert html.count('type="radio"') == 2 and 'type="checkbox"' not in html
    rows = form.expert_rows()
    assert [r.use.data["value"] for r in rows] == [str(e1.pk), str(e2.pk)]
    chosen = _form(registered_family, data=_slerp_post(registered_family, expert=str(e2.pk)))
    assert chosen.is_valid(), chosen.errors
    assert chosen.merge_inputs()["experts"] == [(e2, {})] and chosen.merge_inputs()["parameters"] == {"t": 0.3}
    none = _form(registered_family, data=_slerp_post(registered_family))
    assert not none.is_valid() and "Choose at least one expert." in none.non_field_errors()
    stranger = _form(registered_family, data=_slerp_post(registered_family, expert="999999"))
    assert not stranger.is_valid() and "expert" in stranger.errors
    # form data that ticks a box, as for the other methods, still names the expert
    boxes = _form(registered_family, data=_slerp_post(registered_family, **{f"expert_{e1.pk}__use": "on"}))
    assert boxes.is_valid() and boxes.merge_inputs()["experts"] == [(e1, {})]
    # several experts are still a choice: ties keeps its checkboxes
    assert not _form(registered_family, initial={"method": "ties"}).single_expert


def test_the_chosen_expert_survives_a_switch_of_method(registered_family):
    e1, e2 = registered_family["experts"]
    to_slerp = _form(registered_family, initial={"method": "slerp", f"expert_{e2.pk}__use": "on"})
    assert to_slerp["expert"].value() == str(e2.pk)
    to_ties = _form(registered_family, initial={"method": "ties", "expert": str(e2.pk)})
    assert to_ties[f"expert_{e2.pk}__use"].value() is True and to_ties[f"expert_{e1.pk}__use"].value() is False


def test_the_operator_fields_render_radio_buttons_for_slerp(alice_client, registered_family):
    e1, e2 = registered_family["experts"]
    html = alice_client.get(reverse("runs:operator_fields"), {"method": "slerp", "base": registered_family["base"].pk,
                                                              "expert": e2.pk}).content.decode()
    assert re.search(rf'type="radio" name="expert" value="{e2.pk}"[^>]*checked', html)
    assert re.search(rf'type="radio" name="expert" value="{e1.pk}"', html)
    assert 'name="param__t"' in html and re.search(r'name="param__t" value="0.5"', html)
    assert f'name="expert_{e1.pk}__use"' not in html


@pytest.mark.parametrize("method,weight", [("task_arithmetic", 0.5), ("dare_linear", 0.5), ("breadcrumbs", 0.5),
                                           ("ties", 1.0), ("linear", 1.0), ("multislerp", 1.0), ("nuslerp", 1.0)])
def test_expert_weights_are_prefilled(registered_family, method, weight):
    """1/n where the weighted task vectors are summed, 1.0 where the method divides by the weights' sum."""
    form = _form(registered_family, initial={"method": method})
    for e in registered_family["experts"]:
        assert form[f"expert_{e.pk}__weight"].value() == weight
    # what the user typed wins, and a cleared weight stays cleared (and is an error when used)
    e1 = registered_family["experts"][0]
    typed = _form(registered_family, initial={"method": method, f"expert_{e1.pk}__weight": "0.7"})
    assert typed[f"expert_{e1.pk}__weight"].value() == "0.7"


def test_default_weight_rounds_one_over_n():
    assert default_weight(get_operator("task_arithmetic"), 3) == 0.3333
    assert default_weight(get_operator("task_arithmetic"), 1) == 1.0
    assert default_weight(get_operator("della"), 4) == 1.0  # della normalises by default
