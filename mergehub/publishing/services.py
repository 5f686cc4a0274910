"""Writes for getting a model out: queue a push of a succeeded run to the Hugging Face Hub,
cancel one. (Downloads write nothing.)

A push is queued only for a run whose merged model can be handed out, by a team member or
admin, to a repository id of the form ``owner/name``. The token a member types is stored on
the job row only until the job ends (see models.HubPush); it is never written to the log.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction

from mergehub.accounts.models import Role
from mergehub.accounts.services import require_role
from mergehub.jobs import dispatch
from mergehub.jobs.control import request_cancel
from mergehub.jobs.joblog import log_entry
from mergehub.registry.hf import valid_repo_id
from mergehub.runs.models import MergeRun
from mergehub.runs.services import check_queue

from . import hub
from .models import HubPush
from .outputs import ModelUnavailable, published_files

TOKEN_MAX_CHARS = HubPush._meta.get_field("token").max_length


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not repo_id:
        raise ValidationError({"repo_id": "Enter the repository to push to, as owner/name."})
    if "/" not in repo_id or not valid_repo_id(repo_id):
        raise ValidationError({"repo_id": f"{repo_id[:100]!r} is not a Hub repository id: write owner/name (your "
                                          "user or organisation, a slash, the model's name; letters, digits, "
                                          "'-', '_' and '.')."})
    return repo_id


def check_token(token: str) -> str:
    token = (token or "").strip()
    if len(token) > TOKEN_MAX_CHARS or any(not (33 <= ord(c) <= 126) for c in token):
        raise ValidationError({"token": "That is not a Hugging Face token (printable ASCII without spaces, at most "
                                        f"{TOKEN_MAX_CHARS} characters); leave it blank to use the worker's own."})
    return token


@transaction.atomic
def queue_push(*, user, run: MergeRun, repo_id: str, private: bool = True, token: str = "",
               queue: str | None = None) -> HubPush:
    """Queue a push of ``run``'s merged model (and its model card) to ``repo_id``."""
    require_role(user=user, team=run.team, role=Role.MEMBER, action="push models to the Hugging Face Hub")
    repo_id, token = check_repo_id(repo_id), check_token(token)
    try:
        published_files(run)
    except ModelUnavailable as err:
        raise ValidationError(str(err)) from None
    if HubPush.objects.filter(run=run, repo_id=repo_id, status__in=HubPush.ACTIVE).exists():
        raise ValidationError(f"Run #{run.pk} is already being pushed to {repo_id}; wait for that push to end.")
    queue = check_queue(queue)
    where = hub.endpoint()
    push = HubPush.objects.create(
        team=run.team, author=user, run=run, repo_id=repo_id, private=bool(private), token=token, endpoint=where,
        queue=queue, stage="queued",
        log=[log_entry(f"queued by {user} on the {queue} queue: run #{run.pk} to {repo_id} on {where} "
                       f"({'private' if private else 'public'} if created; "
                       f"{'a token typed for this push' if token else 'the worker’s own Hub token'})")])
    dispatch.wake_on_commit(push)
    return push


@transaction.atomic
def cancel_push(*, push: HubPush, user) -> HubPush:
    """A queued push is cancelled at once (and its token blanked); a running one stops before its
    upload starts (an upload under way finishes)."""
    require_role(user=user, team=push.team, role=Role.MEMBER, action="cancel pushes")
    return request_cancel(HubPush, push.pk, by=user, label=f"Push #{push.pk}")
