"""Environment helpers for the demo settings: URL parsing and service probing.

Kept out of ``settings.py`` so the logic can be unit-tested and so the one-line
start-up banner is printed once per process even if the settings module is
imported (or reloaded) more than once.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "pgsql"})
SQLITE_SCHEMES = frozenset({"sqlite", "sqlite3"})

_banner_printed = False


class DatabaseURLError(ValueError):
    """Raised for a DATABASE_URL this small parser does not understand."""


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True if a plain TCP connect to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def parse_database_url(url: str, *, conn_max_age: int = 60) -> dict[str, Any]:
    """Turn a ``DATABASES['default']`` dict out of a URL, without extra dependencies.

    Supported forms (the same conventions as dj-database-url)::

        postgres://user:pass@host:port/name     (also postgresql://)
        sqlite:///relative/path.sqlite3
        sqlite:////absolute/path.sqlite3
        sqlite:///:memory:

    Query-string parameters of a PostgreSQL URL (``?sslmode=require``) go to ``OPTIONS``.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in SQLITE_SCHEMES:
        # "sqlite:///x" -> path "/x" -> NAME "x"; "sqlite:////tmp/x" -> NAME "/tmp/x".
        name = unquote(parts.path[1:]) if parts.path.startswith("/") else unquote(parts.path)
        if not name:
            raise DatabaseURLError(f"SQLite URL without a path: {url!r}")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    if scheme in POSTGRES_SCHEMES:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise DatabaseURLError("PostgreSQL URL without a database name")
        try:
            port = parts.port
        except ValueError as exc:
            raise DatabaseURLError(f"bad port in DATABASE_URL: {exc}") from None
        config: dict[str, Any] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": unquote(parts.hostname or ""),
            "PORT": str(port) if port else "",
            "CONN_MAX_AGE": conn_max_age,
        }
        options = dict(parse_qsl(parts.query))
        if options:
            config["OPTIONS"] = options
        return config
    raise DatabaseURLError(f"unsupported DATABASE_URL scheme {parts.scheme!r}")


def describe_database(config: dict[str, Any], base_dir: str | None = None) -> str:
    """Short, password-free description of a database config for the banner."""
    engine = str(config.get("ENGINE", ""))
    name = str(config.get("NAME", ""))
    if engine.endswith("sqlite3"):
        shown = name
        if base_dir and os.path.isabs(name):
            # Inside the repository: show it relative (testproject/db.sqlite3).
            relative = os.path.relpath(name, base_dir) if name.startswith(base_dir) else ""
            if relative and not relative.startswith(".."):
                shown = relative
        return f"sqlite ({shown})"
    host = config.get("HOST") or "localhost"
    port = config.get("PORT") or 5432
    return f"postgresql://{host}:{port}/{name}"


def redact_url(url: str) -> str:
    """``redis://:secret@host:6379/0`` -> ``redis://host:6379/0`` (drops credentials)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


def announce(line: str) -> None:
    """Print ``line`` to stderr once per process, unless PERFKIT_DEMO_QUIET=1."""
    global _banner_printed
    if _banner_printed or os.environ.get("PERFKIT_DEMO_QUIET") == "1":
        return
    _banner_printed = True
    print(line, file=sys.stderr, flush=True)


def env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in {"1", "true", "yes", "on"}
