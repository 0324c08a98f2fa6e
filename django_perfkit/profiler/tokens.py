"""Profile tokens: signed with ``SECRET_KEY``, expiring, naming a user.

A token is what ``manage.py perfkit_token --user alice --ttl 15m`` prints
and what ``X-Perfkit-Profile: <token>`` (or ``?token=`` on a profile's URL)
presents. It is :func:`django.core.signing.dumps` of the user's primary key
and an expiry time, with a salt of its own, so a token signed for another
purpose (a session, a password reset) is not one. Anything wrong with a
token (forged, expired, truncated, oversized, for a user who is gone or no
longer active and staff) makes :func:`read_token` return ``None``: callers
ignore the header then, and say nothing about why.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core import signing

__all__ = ["make_token", "read_token"]

logger = logging.getLogger("django_perfkit.profiler")

_SALT = "django_perfkit.profiler.token"
#: Longer than any token perfkit makes: anything longer is not read at all.
MAX_TOKEN_LENGTH = 300


def make_token(user: Any, ttl: float) -> str:
    """A token that lets ``user`` (active staff) profile for ``ttl`` seconds."""
    if ttl <= 0:
        raise ValueError("a token's ttl must be > 0 seconds")
    return signing.dumps({"u": str(user.pk), "e": int(time.time() + ttl)}, salt=_SALT)


def read_token(value: str) -> Any | None:
    """The user a valid, unexpired token names, if still active staff; else ``None``."""
    if not value or len(value) > MAX_TOKEN_LENGTH:
        return None
    try:
        data = signing.loads(value, salt=_SALT)
        user_pk = data["u"]
        expires = int(data["e"])
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        logger.debug("perfkit: profile token rejected (bad signature or malformed)")
        return None
    now = time.time()
    if expires < now:
        logger.debug("perfkit: profile token rejected (expired)")
        return None
    from django_perfkit.conf import get_settings

    if expires - now > get_settings().profiler.token_max_ttl:
        # Lowering TOKEN_MAX_TTL shortens the tokens already out there.
        logger.debug("perfkit: profile token rejected (lives longer than TOKEN_MAX_TTL)")
        return None
    from django.contrib.auth import get_user_model

    try:
        user = get_user_model()._default_manager.get(pk=user_pk)
    except Exception:
        return None
    if not (user.is_active and user.is_staff):
        return None
    return user
