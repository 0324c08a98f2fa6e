"""Rate-limit keys: everything django-ratelimit accepts.

``"ip"``, ``"user"``, ``"user_or_ip"``, ``"header:x-api-key"``, ``"get:q"``,
``"post:username"``, a callable ``(group, request) -> str``, or a dotted path
to one. :func:`resolve_key` checks a key once (at decoration time or at
startup) and returns the function that reads it from a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest
from django.utils.module_loading import import_string

from django_perfkit.ratelimit.client import client_ip

KeyFunc = Callable[[str, HttpRequest], str]

MAX_KEY_VALUE = 256  # a header or form value longer than this is cut (and still distinct)


class InvalidKey(ValueError):
    pass


def _user(group: str, request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    # As django-ratelimit: anonymous users all share the key "None".
    return str(user.pk) if user is not None and user.is_authenticated else "None"


def _user_or_ip(group: str, request: HttpRequest) -> str:
    user = getattr(request, "user", None)
    if user is not None and user.is_authenticated:
        return str(user.pk)
    return client_ip(request)


def _ip(group: str, request: HttpRequest) -> str:
    return client_ip(request)


_SIMPLE: dict[str, KeyFunc] = {"ip": _ip, "user": _user, "user_or_ip": _user_or_ip}


def bounded(value: Any) -> str:
    """A key value as a string of bounded length (a long one is cut and hashed)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_KEY_VALUE:
        import hashlib

        return text[:64] + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    return text


def _accessor(kind: str, name: str) -> KeyFunc:
    if kind == "header":
        meta = "HTTP_" + name.upper().replace("-", "_")

        def header(group: str, request: HttpRequest) -> str:
            return bounded(request.META.get(meta, ""))

        return header
    if kind == "get":

        def get(group: str, request: HttpRequest) -> str:
            return bounded(request.GET.get(name, ""))

        return get

    def post(group: str, request: HttpRequest) -> str:
        return bounded(request.POST.get(name, ""))

    return post


def resolve_key(key: Any) -> KeyFunc:
    """The function that reads ``key`` from a request; raises :class:`InvalidKey`."""
    if callable(key):
        return key  # type: ignore[no-any-return]
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"key {key!r} must be a string like 'ip' or 'header:x-api-key'")
    if key in _SIMPLE:
        return _SIMPLE[key]
    kind, sep, name = key.partition(":")
    if sep and kind in ("header", "get", "post"):
        if not name:
            raise InvalidKey(f"key {key!r} names no {kind}; write e.g. '{kind}:x-api-key'")
        return _accessor(kind, name)
    if "." in key:
        try:
            func = import_string(key)
        except ImportError as exc:
            raise InvalidKey(f"key {key!r} cannot be imported: {exc}") from exc
        if not callable(func):
            raise InvalidKey(f"key {key!r} is not callable")
        return func  # type: ignore[no-any-return]
    raise InvalidKey(
        f"unknown key {key!r}; use 'ip', 'user', 'user_or_ip', 'header:NAME', 'get:NAME', "
        "'post:NAME', a callable (group, request) -> str, or a dotted path to one"
    )
