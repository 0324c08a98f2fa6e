"""The write watcher's reading of SQL: which version tokens each statement bumps."""

from __future__ import annotations

import pytest

from django_perfkit.versions.tokens import Tokens, token_value
from django_perfkit.versions.writes import write_keys

T = Tokens("p", "default")
A = "news_article"


def keys(sql: str, params: object = (), many: bool = False) -> list[str] | None:
    """The statement's keys but the w: ones, which are checked here: one per written table."""
    result = write_keys(T, sql, params, many)
    if result is None:
        return None
    rest = [k for k in result if not k.startswith(T.base + "w:")]
    written = {k[len(T.base) :].split(":", 2)[1] for k in rest}
    assert sorted(set(result) - set(rest)) == sorted(T.key("w", t) for t in written)
    return sorted(rest)


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT "news_article"."id" FROM "news_article"',
        "  select 1",
        "SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "SET TIME ZONE 'UTC'",
        "/* comment */ SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "EXPLAIN SELECT 1",
    ],
)
def test_reads_bump_nothing(sql: str) -> None:
    assert keys(sql) == []


def test_save_update_bumps_the_row_the_scan_and_the_new_foreign_keys() -> None:
    sql = (
        'UPDATE "news_article" SET "title" = %s, "category_id" = %s, "author_id" = %s, '
        '"view_count" = %s WHERE "news_article"."id" = %s'
    )
    assert keys(sql, ("t", 7, 9, 0, 42)) == sorted(
        [
            T.scan(A),
            T.value(A, "id", 42),
            T.value(A, "category_id", 7),
            T.value(A, "author_id", 9),
        ]
    )


def test_partial_update_bumps_the_generation_of_foreign_keys_it_does_not_set() -> None:
    sql = (
        'UPDATE "news_article" SET "view_count" = ("news_article"."view_count" + %s) '
        'WHERE "news_article"."id" = %s'
    )
    assert keys(sql, (1, 42)) == sorted(
        [
            T.scan(A),
            T.value(A, "id", 42),
            T.generation(A, "category_id"),
            T.generation(A, "author_id"),
        ]
    )


def test_foreign_key_set_to_an_expression_bumps_its_generation() -> None:
    sql = (
        'UPDATE "news_article" SET "category_id" = ("news_article"."author_id"), '
        '"author_id" = %s WHERE "news_article"."id" = %s'
    )
    assert T.generation(A, "category_id") in (keys(sql, (3, 42)) or [])


def test_update_by_other_conditions_is_coarse() -> None:
    sql = 'UPDATE "news_article" SET "title" = %s WHERE "news_article"."category_id" = %s'
    assert keys(sql, ("t", 3)) == [T.table(A)]
    assert keys('UPDATE "news_article" SET "title" = %s', ("t",)) == [T.table(A)]


def test_update_of_the_primary_key_is_coarse() -> None:
    sql = 'UPDATE "news_article" SET "id" = %s WHERE "news_article"."id" = %s'
    assert keys(sql, (5, 6)) == [T.table(A)]


def test_update_with_pk_in_list() -> None:
    sql = 'UPDATE "news_article" SET "title" = %s WHERE "news_article"."id" IN (%s, %s)'
    got = keys(sql, ("t", 1, 2)) or []
    assert T.value(A, "id", 1) in got and T.value(A, "id", 2) in got
    assert T.table(A) not in got


def test_insert_bumps_scan_and_foreign_key_values() -> None:
    sql = (
        'INSERT INTO "news_article" ("title", "category_id", "author_id") '
        'VALUES (%s, %s, %s), (%s, %s, %s) RETURNING "news_article"."id"'
    )
    assert keys(sql, ("a", 1, 2, "b", 3, 2)) == sorted(
        [
            T.scan(A),
            T.value(A, "category_id", 1),
            T.value(A, "author_id", 2),
            T.value(A, "category_id", 3),
            T.value(A, "author_id", 2),
        ]
    )


def test_insert_forms_it_cannot_read_are_coarse() -> None:
    unnest = (
        'INSERT INTO "news_article" ("title", "category_id") SELECT * FROM '
        "UNNEST((%s)::varchar[], (%s)::integer[])"
    )
    assert keys(unnest, (["a"], [1])) == [T.table(A)]
    upsert = (
        'INSERT INTO "news_article" ("id", "title") VALUES (%s, %s) ON CONFLICT("id") '
        'DO UPDATE SET "title" = EXCLUDED."title"'
    )
    assert keys(upsert, (1, "a")) == [T.table(A)]
    assert keys("INSERT OR REPLACE INTO news_article (id) VALUES (%s)", (1,)) == [T.table(A)]
    many = 'INSERT INTO "news_article" ("title") VALUES (%s)'
    assert keys(many, [("a",), ("b",)], many=True) == [T.table(A)]


def test_delete_by_primary_keys_is_fine_and_other_deletes_are_coarse() -> None:
    sql = 'DELETE FROM "news_article" WHERE "news_article"."id" IN (%s, %s)'
    assert keys(sql, (1, 2)) == sorted([T.scan(A), T.value(A, "id", 1), T.value(A, "id", 2)])
    assert keys('DELETE FROM "news_article"', ()) == [T.table(A)]
    other = 'DELETE FROM "news_article" WHERE "news_article"."category_id" = %s'
    assert keys(other, (1,)) == [T.table(A)]


def test_unknown_tables_and_ddl_are_coarse_on_their_table() -> None:
    assert keys("UPDATE legacy_stats SET n = n + 1 WHERE id = %s", (1,)) == [
        T.table("legacy_stats")
    ]
    assert keys('ALTER TABLE "news_article" ADD COLUMN "x" integer') == [T.table(A)]
    assert keys('TRUNCATE TABLE "news_article"') == [T.table(A)]
    assert keys('CREATE INDEX "i" ON "news_article" ("title")') == [T.table(A)]
    assert keys('DROP TABLE IF EXISTS "news_article"') == [T.table(A)]


def test_writes_without_a_readable_table_bump_the_epoch() -> None:
    assert keys("WITH d AS (DELETE FROM news_article RETURNING id) SELECT count(*) FROM d") is None
    assert keys("CALL refresh_everything()") is None


def test_named_parameters_are_coarse() -> None:
    sql = 'UPDATE "news_article" SET "title" = %(t)s WHERE "news_article"."id" = %(id)s'
    assert keys(sql, {"t": "x", "id": 1}) == [T.table(A)]


def test_token_values_are_key_safe() -> None:
    assert token_value(42) == "42"
    for value in ("a b\nc", "x" * 500, ("t",)):
        spelled = token_value(value)
        assert len(spelled) == 16 and spelled.isalnum()
    assert token_value("1") != token_value(1)


def test_value_tokens_filled_in_from_parameters_are_spelled_as_tokens_value() -> None:
    # The statement is read once; each execution fills its values into the
    # recipe's key prefixes, which must give the keys the readers' side names.
    sql = 'UPDATE "news_article" SET "title" = %s WHERE "news_article"."id" = %s'
    for pk in (7, "slug 7", 2**70, 7.5):
        assert T.value(A, "id", pk) in (keys(sql, ("t", pk)) or [])
    assert T.value(A, "id", 7) == f"{T.base}f:{A}:id:7"


def test_set_operations_and_parenthesised_reads_bump_nothing() -> None:
    union = '(SELECT "news_article"."id" FROM "news_article") UNION (SELECT 1)'
    assert keys(union) == []


def test_more_write_forms_are_never_missed() -> None:
    assert keys("WITH d AS (DELETE\nFROM news_article RETURNING id) SELECT 1") is None
    assert keys('TRUNCATE "news_article", "news_comment"') is None
    assert keys('TRUNCATE "news_article" CASCADE') is None
    assert keys('DROP TABLE "a", "b"') is None
    assert keys('EXPLAIN ANALYZE UPDATE "news_article" SET "title" = %s', ("x",)) is None
    assert keys("INSERT IGNORE INTO `news_article_tags` (`a`) VALUES (%s)", (1,)) == [
        T.table("news_article_tags")
    ]


def test_a_composed_statement_bumps_the_epoch() -> None:
    from django.db import connection

    from django_perfkit.versions import writes

    seen: list[list[str]] = []
    original = writes.bump
    writes.bump = lambda alias, keys: seen.append(list(keys)) or True  # type: ignore[assignment]
    try:
        writes.watcher(
            lambda *a: None,
            object(),
            (),
            False,
            {"connection": connection},  # type: ignore[arg-type]
        )
    finally:
        writes.bump = original  # type: ignore[assignment]
    assert seen and seen[0][-1].endswith(":epoch")


def test_token_seeds_are_perfkits_own_and_new_in_every_forked_child() -> None:
    import random
    import subprocess
    import sys

    from django_perfkit.versions.tokens import init_seed

    # A project's random.seed() does not make them repeat.
    random.seed(1)
    first = init_seed()
    random.seed(1)
    assert init_seed() != first
    assert len(first) == 12 and first.isdigit()
    # A forked worker does not continue its parent's sequence (it would
    # recreate an evicted token at a value its sibling uses). Forked from a
    # fresh interpreter: this one runs threads, which fork() does not carry.
    code = """
import os
from django_perfkit.versions.tokens import init_seed
init_seed()
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write, init_seed().encode())
    os._exit(0)
os.close(write)
child = os.read(read, 64).decode()
os.waitpid(pid, 0)
print(child, init_seed())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child, parent = out.stdout.split()
    assert len(child) == len(parent) == 12 and child != parent
