"""``manage.py prepare_db``: create the configured PostgreSQL database if it is missing."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils.connection import ConnectionDoesNotExist

# Keys of DATABASES[...]["OPTIONS"] that Django itself consumes; the rest are libpq options.
_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"}
)


class Command(BaseCommand):
    help = (
        "Create the database named in DATABASES if it does not exist (PostgreSQL only; "
        "a no-op on SQLite). Safe to run any number of times."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--database",
            default="default",
            help="Database alias to prepare (default: %(default)s).",
        )
        parser.add_argument(
            "--maintenance-db",
            default="postgres",
            help="Existing database to connect to while creating it (default: %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        alias: str = options["database"]
        try:
            connection = connections[alias]
        except ConnectionDoesNotExist as exc:
            raise CommandError(str(exc)) from exc
        if connection.vendor != "postgresql":
            self.stdout.write(
                f"Database {alias!r} uses {connection.vendor}; nothing to prepare "
                "(the file is created on first use)."
            )
            return

        # Imported here so the command module loads without psycopg installed (SQLite demo).
        import psycopg
        from psycopg import errors, sql

        settings_dict = connection.settings_dict
        name = str(settings_dict["NAME"])
        conninfo: dict[str, Any] = {
            key: value
            for key, value in (settings_dict.get("OPTIONS") or {}).items()
            if key not in _DJANGO_ONLY_OPTIONS
        }
        conninfo.update(
            dbname=options["maintenance_db"],
            user=settings_dict.get("USER") or None,
            password=settings_dict.get("PASSWORD") or None,
            host=settings_dict.get("HOST") or None,
            port=settings_dict.get("PORT") or None,
        )
        conninfo = {key: value for key, value in conninfo.items() if value is not None}
        conninfo.setdefault("connect_timeout", 5)
        where = f"{conninfo.get('host', 'localhost')}:{conninfo.get('port', 5432)}"

        try:
            with psycopg.connect(autocommit=True, **conninfo) as conn:
                row = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", [name]
                ).fetchone()
                if row is not None:
                    self.stdout.write(f"Database {name!r} already exists on {where}.")
                    return
                try:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                except errors.DuplicateDatabase:
                    # Someone else created it between the check and now: same outcome.
                    self.stdout.write(f"Database {name!r} already exists on {where}.")
                    return
        except psycopg.OperationalError as exc:
            raise CommandError(f"Cannot connect to PostgreSQL at {where}: {exc}") from exc
        self.stdout.write(self.style.SUCCESS(f"Created database {name!r} on {where}."))
