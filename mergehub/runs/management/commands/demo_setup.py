"""Prepare a demo: an admin user, a demo team, a small indexed model family, and the trained
demo family (mergehub.family) with its four evaluation tasks.

    python manage.py demo_setup [--username admin] [--password ...] [--size 100MB] [--no-trained-family]

The LoRA-style family is generated and indexed here; the trained family is queued as a
background job (a few minutes on a CPU) that the demo's worker runs while the pages are up,
so nothing here waits for training.

Idempotent: re-running keeps the users, team, families and checkpoints it made before (the
password is reset to the one given, so the printed credentials always work).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from mergehub.accounts.models import Membership, Role, Team
from mergehub.engine.api import MergeHubError
from mergehub.registry.indexing import index_now
from mergehub.registry.models import Checkpoint
from mergehub.registry.roots import allowed, team_checkpoints_dir
from mergehub.registry.services import register_checkpoint

DEMO_FAMILY = "demo"
FAMILY_FILE = "family.json"


class Command(BaseCommand):
    help = "Create an admin user, a demo team and a small indexed checkpoint family."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="mergehub-demo")
        parser.add_argument("--team", default="Demo")
        parser.add_argument("--size", default="100MB", help="weight bytes of each model (default 100MB)")
        parser.add_argument("--experts", type=int, default=3)
        parser.add_argument("--delta", default="lora", choices=["lora", "dense"])
        parser.add_argument("--no-trained-family", action="store_true",
                            help="do not queue the training of the tiny Llama family (docs/family.md)")
        parser.add_argument("--dir", default=None,
                            help="where the family goes (default: the demo team's own folder, "
                                 "DATA_DIR/teams/<slug>/checkpoints/demo)")

    def handle(self, *args, **opts):
        user = self._admin(opts["username"], opts["password"])
        team = self._team(opts["team"], user)
        family_dir = Path(opts["dir"]) if opts["dir"] else team_checkpoints_dir(team) / DEMO_FAMILY
        paths = self._family(team, family_dir.absolute(), opts["size"], opts["experts"], opts["delta"])
        self._register(team, user, paths)
        if not opts["no_trained_family"]:
            self._trained_family(team, user)
        self.stdout.write(self.style.SUCCESS(
            f"Demo ready: log in as {opts['username']} / {opts['password']} (team {team.name})."))

    def _admin(self, username: str, password: str):
        User = get_user_model()
        user, created = User.objects.get_or_create(username=username,
                                                   defaults={"email": f"{username}@example.com"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"{'Created' if created else 'Kept'} admin user {username}.")
        return user

    def _team(self, name: str, user) -> Team:
        from django.utils.text import slugify

        team, _ = Team.objects.get_or_create(slug=slugify(name), defaults={"name": name})
        Membership.objects.update_or_create(user=user, team=team, defaults={"role": Role.ADMIN})
        return team

    def _family(self, team: Team, root: Path, size: str, experts: int, delta: str) -> dict:
        root.parent.mkdir(parents=True, exist_ok=True)
        if not allowed(Path(os.path.realpath(root.parent)) / root.name, team):
            raise CommandError(f"{root} is outside the {team.name} team's checkpoint roots; pass --dir under "
                               "one (its own folder, a StorageRoot, or MERGEHUB_CHECKPOINT_ROOTS)")
        manifest = root / FAMILY_FILE
        if manifest.is_file():
            info = json.loads(manifest.read_text())
            self.stdout.write(f"Kept the demo family in {root}.")
            return {"base": Path(info["base"]), "experts": [Path(p) for p in info["experts"]]}
        from mergehub.demo.synthetic import generate_family  # imports torch

        self.stdout.write(f"Generating a demo family in {root} ({experts} experts of {size}, {delta} deltas)...")
        try:
            paths = generate_family(root, size=size, experts=experts, delta=delta, seed=0,
                                    progress=self._progress)
        except MergeHubError as err:
            raise CommandError(str(err)) from None
        self.stdout.write("")
        return {"base": Path(paths["base"]), "experts": [Path(p) for p in paths["experts"]]}

    def _progress(self, done: int, total: int) -> None:
        if total:
            sys.stdout.write(f"\r  written {done / total:6.1%}")
            sys.stdout.flush()

    def _trained_family(self, team: Team, user) -> None:
        """Register the four built-in tasks now and queue the family's training, unless the
        family is registered already or its training is under way."""
        from mergehub.evaluation.models import FamilyJob
        from mergehub.evaluation.task_registry import ensure_builtin_tasks
        from mergehub.evaluation.training import DEFAULT_FAMILY, queue_family_training

        ensure_builtin_tasks(team, user)
        names = Checkpoint.objects.filter(team=team, family__name=DEFAULT_FAMILY,
                                          index_status=Checkpoint.IndexStatus.READY).count()
        if names >= 5:
            self.stdout.write(f"Kept the trained {DEFAULT_FAMILY} family.")
            return
        if FamilyJob.objects.filter(team=team, family_name=DEFAULT_FAMILY, status__in=FamilyJob.ACTIVE).exists():
            self.stdout.write(f"The {DEFAULT_FAMILY} family's training is already queued.")
            return
        job = queue_family_training(team=team, user=user)
        self.stdout.write(f"Queued training #{job.pk} of the {DEFAULT_FAMILY} family; the worker trains it in the "
                          "background (progress on the Tasks page).")

    def _register(self, team: Team, user, paths: dict) -> None:
        self._register_one(team, user, "demo-base", "base", paths["base"])
        for k, path in enumerate(paths["experts"]):
            self._register_one(team, user, f"demo-expert-{k}", "expert", path)

    def _register_one(self, team: Team, user, name: str, role: str, path: Path) -> None:
        ckpt = Checkpoint.objects.filter(team=team, name=name).first()
        if ckpt is None:
            self.stdout.write(f"Registering {role} {name}...")
            try:
                ckpt = register_checkpoint(team=team, user=user, name=name, role=role, family_name=DEMO_FAMILY,
                                           local_path=str(path))
            except ValidationError as err:
                raise CommandError(f"{name}: {' '.join(err.messages)}") from None
        if ckpt.index_status == Checkpoint.IndexStatus.PENDING:
            # Index here and now, so the demo is ready before any worker starts; the wake-up
            # sent for the index job then finds nothing queued and does nothing.
            self.stdout.write(f"Indexing {name} against its base...")
            index_now(ckpt)
        ckpt.refresh_from_db()
        if ckpt.index_status != Checkpoint.IndexStatus.READY:
            raise CommandError(f"{name} is {ckpt.index_status}: {ckpt.index_error or 'see the log'}; "
                               "fix it, then re-run demo_setup")
        self.stdout.write(f"{role.capitalize()} {name} is ready.")
