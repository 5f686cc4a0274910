"""The register-a-checkpoint form. It checks the shape of the input; the service checks the
files (path under a root, safetensors, same tensors as the family's base)."""

from django import forms

from .models import Checkpoint


class RegisterCheckpointForm(forms.Form):
    name = forms.CharField(max_length=200, help_text="Unique within the team, e.g. llama-3-8b-math.")
    role = forms.ChoiceField(choices=Checkpoint.Role.choices, initial=Checkpoint.Role.EXPERT,
                             widget=forms.RadioSelect,
                             help_text="A base starts a family; an expert is a fine-tune of a family's base.")
    family_name = forms.CharField(
        max_length=100, required=False, label="Family",
        help_text="For a base: the new family's name (defaults to the checkpoint name). "
                  "For an expert: the family whose base it was fine-tuned from.")
    source = forms.ChoiceField(choices=Checkpoint.Source.choices, initial=Checkpoint.Source.LOCAL,
                               widget=forms.RadioSelect)
    local_path = forms.CharField(required=False, label="Local directory",
                                 help_text="Absolute path of a directory of .safetensors files, under an "
                                           "allowed checkpoint root.")
    hf_repo_id = forms.CharField(required=False, max_length=200, label="Hugging Face repo id",
                                 help_text="owner/name, e.g. meta-llama/Llama-3.2-1B.")
    hf_revision = forms.CharField(required=False, max_length=200, label="Revision",
                                  help_text="A branch, tag or commit; empty means main.")

    def __init__(self, *args, families=(), roots=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.family_names = [f.name for f in families]
        if roots:
            self.fields["local_path"].help_text += " Allowed roots: " + ", ".join(str(r) for r in roots) + "."
        self.fields["local_path"].widget.attrs["placeholder"] = str(roots[0]) + "/…" if roots else ""
        self.fields["family_name"].widget.attrs["list"] = "family-names"

    def clean(self):
        data = super().clean()
        if data.get("source") == Checkpoint.Source.LOCAL and not data.get("local_path"):
            self.add_error("local_path", "Enter the checkpoint's directory.")
        if data.get("source") == Checkpoint.Source.HF and not data.get("hf_repo_id"):
            self.add_error("hf_repo_id", "Enter the repo id, e.g. owner/name.")
        return data

    def service_kwargs(self) -> dict:
        """Keyword arguments for registry.services.register_checkpoint (one source only)."""
        data = self.cleaned_data
        kwargs = {"name": data["name"], "role": data["role"], "family_name": data.get("family_name") or None}
        if data["source"] == Checkpoint.Source.LOCAL:
            kwargs["local_path"] = data["local_path"]
        else:
            kwargs["hf_repo_id"] = data["hf_repo_id"]
            kwargs["hf_revision"] = data.get("hf_revision") or None
        return kwargs
