"""The seam to the Hugging Face Hub: the one place that makes an ``HfApi`` client, and the one
that turns what huggingface_hub raises into a message a team member can act on.

``client()`` builds ``HfApi`` from this module's ``HfApi`` name, so tests replace that name
(monkeypatch ``mergehub.publishing.hub.HfApi``) with a fake that records what would have been
uploaded; nothing here talks to the network by itself.
"""

from __future__ import annotations

from django.conf import settings
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

import mergehub
from mergehub.engine.api import MergeHubError
from mergehub.registry.hf import offline

NOTHING_CHANGED = "nothing was pushed and nothing changed here"
TRANSPORT_MODULES = {"httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3", "h11", "ssl", "socket"}


class HubPushError(MergeHubError):
    """The push could not be made; the message says why and what to do."""


def endpoint() -> str:
    """The Hub pushed to: MERGEHUB_HF_ENDPOINT, else huggingface_hub's own (HF_ENDPOINT or huggingface.co)."""
    return (settings.MERGEHUB_HF_ENDPOINT or constants.ENDPOINT).rstrip("/")


def client(*, token: str | None) -> HfApi:
    """An ``HfApi`` for ``endpoint()``; ``token`` blank or None: huggingface_hub's own configured
    token (``HF_TOKEN``, or the one ``hf auth login`` stored on the worker)."""
    return HfApi(endpoint=endpoint(), token=token or None, library_name="mergehub",
                 library_version=mergehub.__version__)


def _offline_error() -> HubPushError:
    return HubPushError("The Hugging Face Hub cannot be reached (offline mode is on: HF_HUB_OFFLINE is set on "
                        f"the worker); {NOTHING_CHANGED}. Unset HF_HUB_OFFLINE on the worker and push again.")


def check_online() -> None:
    if offline():
        raise _offline_error()


def _status(err: HfHubHTTPError) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else err.__class__.__name__)[:300]


def is_transport_error(err: BaseException) -> bool:
    """A network failure (refused, unreachable, timed out, TLS), whichever HTTP library
    huggingface_hub uses in this version."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return type(err).__module__.split(".")[0] in TRANSPORT_MODULES


def explain(err: BaseException, *, repo_id: str, typed_token: bool) -> HubPushError:
    """A HubPushError for what huggingface_hub raised (the token never appears in it)."""
    where = endpoint()
    whose = "the token you typed" if typed_token else "the worker's Hugging Face token (HF_TOKEN or `hf auth login`)"
    if isinstance(err, OfflineModeIsEnabled):
        return _offline_error()
    if isinstance(err, HfHubHTTPError):
        status = _status(err)
        if status in (401, 403):
            return HubPushError(f"The Hugging Face Hub at {where} refused the credentials ({status}): {whose} "
                                f"cannot write to {repo_id}; {NOTHING_CHANGED}. Use a token with write access "
                                f"to {repo_id.split('/')[0]} and push again.")
        if status == 404:
            return HubPushError(f"The Hugging Face Hub at {where} has no {repo_id} that {whose} may write to (404); "
                                f"{NOTHING_CHANGED}. Check the repository id and the token.")
        return HubPushError(f"The Hugging Face Hub at {where} refused the push ({status or 'error'}: "
                            f"{_first_line(err)}); {NOTHING_CHANGED}. Check {repo_id} and its settings on the "
                            "Hub, then push again (later, if the Hub says it is busy).")
    if is_transport_error(err):
        return HubPushError(f"The Hugging Face Hub cannot be reached at {where} ({err.__class__.__name__}: "
                            f"{_first_line(err)}); {NOTHING_CHANGED}. Check the worker's network (or "
                            "MERGEHUB_HF_ENDPOINT) and push again.")
    return HubPushError(f"huggingface_hub failed ({err.__class__.__name__}: {_first_line(err)}); {NOTHING_CHANGED}. "
                        "The worker's log has the details; push again once they are dealt with.")
