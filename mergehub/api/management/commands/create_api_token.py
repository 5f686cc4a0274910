"""Create an API token for a user in a team and print it (the last line of the output, alone).

    python manage.py create_api_token --user alice --team acme [--write] [--expires-days 90] [--name ci]

The token is shown once; only its hash is stored.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError

from mergehub.accounts.models import Team
from mergehub.api.tokens import create_token


class Command(BaseCommand):
    help = "Create an API token for a user in a team; prints the token as the last line."

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="Username of the token's owner.")
        parser.add_argument("--team", required=True, help="Slug of a team the user belongs to.")
        parser.add_argument("--write", action="store_true", help="A read-write token (default: read-only).")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire after N days (default: never).")
        parser.add_argument("--name", default="command line", help="What the token is for.")

    def handle(self, *args, **options):
        user = get_user_model().objects.filter(username=options["user"]).first()
        if user is None:
            raise CommandError(f"No user named {options['user']!r}.")
        team = Team.objects.filter(slug=options["team"]).first()
        if team is None:
            raise CommandError(f"No team with slug {options['team']!r}.")
        try:
            token, plain = create_token(user=user, team=team, name=options["name"], can_write=options["write"],
                                        expires_days=options["expires_days"], by=None)
        except PermissionDenied:
            raise CommandError(f"{user} is not a member of {team.name}; add them to the team first.") from None
        except ValidationError as error:
            raise CommandError(" ".join(error.messages)) from None
        expiry = f"expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else "never expires"
        self.stdout.write(f"Created {token.access_label} token {token.name!r} ({token.prefix}…) for {user} in "
                          f"{team.name}; it {expiry}. It is shown once; keep it secret:")
        self.stdout.write(plain)
