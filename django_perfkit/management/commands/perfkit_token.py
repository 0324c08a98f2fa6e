"""``manage.py perfkit_token --user alice --ttl 15m``: a token to profile with.

Send it as ``X-Perfkit-Profile: <token>`` (``curl -H ...``) to have one real
request profiled, in production too; or as ``?token=`` to open a profile.
The user must be active staff when the token is made and when it is used.
"""

from __future__ import annotations

import re
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_perfkit.conf import get_settings
from django_perfkit.profiler.tokens import make_token

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise CommandError(f"--ttl {text!r}: write a duration such as 900, 15m, 2h or 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


class Command(BaseCommand):
    help = "Print a signed, expiring token that lets a staff user profile requests."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user", required=True, help="username of an active staff user")
        parser.add_argument("--ttl", default="15m", help="how long it is valid (15m, 2h, 900)")

    def handle(self, *args: Any, **options: Any) -> None:
        ttl = parse_ttl(options["ttl"])
        longest = get_settings().profiler.token_max_ttl
        if ttl > longest:
            raise CommandError(
                f"--ttl {options['ttl']} is longer than PERFKIT['PROFILER']['TOKEN_MAX_TTL'] "
                f"({longest} s): ask for less, or raise the setting"
            )
        model = get_user_model()
        try:
            user = model._default_manager.get_by_natural_key(options["user"])
        except model.DoesNotExist:
            raise CommandError(f"no user {options['user']!r}") from None
        if not (user.is_active and user.is_staff):
            raise CommandError(f"{options['user']!r} is not active staff: only staff may profile")
        self.stdout.write(make_token(user, ttl))
