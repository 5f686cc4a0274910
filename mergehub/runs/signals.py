"""Signals other apps listen to, so this app never imports them."""

from django.dispatch import Signal

# Sent inside the final status write's transaction of a merge run (by its runner or by the
# reaper), with ``run`` and ``status``. Receivers must not raise.
merge_settled = Signal()
