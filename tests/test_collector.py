from __future__ import annotations

import _thread
import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from django.contrib.auth.models import Group, User
from django.db import DatabaseError, connection, connections
from django.test import override_settings

from django_perfkit.collectors.db import collector, install
from django_perfkit.record import RequestRecord, _current, record_request

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def test_collector_is_installed_on_every_connection() -> None:
    for alias in ("default", "other"):
        connections[alias].ensure_connection()
        assert collector in connections[alias].execute_wrappers


def test_install_is_idempotent() -> None:
    install(connection)
    install(connection)
    assert connection.execute_wrappers.count(collector) == 1


def test_counts_queries_on_every_alias() -> None:
    with record_request() as rec:
        list(User.objects.all())
        list(Group.objects.using("other").all())
        User.objects.filter(username="x").exists()
    assert rec.db.count == 3
    assert [q.alias for q in rec.db.queries] == ["default", "other", "default"]
    assert rec.db.time > 0
    assert rec.db.time == pytest.approx(sum(q.duration for q in rec.db.queries))


def test_no_record_no_collection() -> None:
    list(User.objects.all())  # must simply work; nothing to write into
    with record_request() as rec:
        pass
    assert rec.db.count == 0


def test_call_site_is_the_project_line_not_django() -> None:
    with record_request() as rec:
        list(User.objects.filter(username="someone"))  # THIS LINE
    (query,) = rec.db.queries
    assert query.call_site is not None
    path, _, rest = query.call_site.partition(":")
    assert path.endswith("tests/test_collector.py")
    line = int(rest.split()[0])
    source = Path(__file__).read_text().splitlines()[line - 1]
    assert "THIS LINE" in source
    assert "in test_call_site_is_the_project_line_not_django" in query.call_site


def _project_wrapper(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
    return execute(sql, params, many, context)  # an execute wrapper in project code


@contextmanager
def _wrapper_in_front() -> Iterator[None]:
    """A project's execute wrapper placed in front of perfkit's (this file
    counts as project code): it is what calls the collector."""
    connection.execute_wrappers.insert(0, _project_wrapper)
    try:
        yield
    finally:
        connection.execute_wrappers.remove(_project_wrapper)


def test_an_execute_wrapper_outside_perfkits_is_not_taken_for_the_call_site() -> None:
    # The walk skips the collector's caller and finds the line below.
    with _wrapper_in_front(), record_request() as rec:
        User.objects.filter(username="x").exists()  # THE QUERY
    (query,) = rec.db.queries
    assert query.site is not None
    assert query.site[2].startswith("test_an_execute_wrapper_outside_perfkits")
    assert "THE QUERY" in Path(__file__).read_text().splitlines()[query.site[1] - 1]


def test_under_the_query_guard_a_front_wrapper_is_not_the_call_site_either() -> None:
    from django_perfkit.queries import capture

    with _wrapper_in_front(), capture() as report:
        User.objects.filter(username="x").exists()  # LINE guarded
    (query,) = report.queries
    assert query.site is not None
    assert query.site[1] == _line_marked("guarded")


def test_a_raw_cursor_query_has_its_line() -> None:
    with record_request() as rec, connection.cursor() as cursor:
        cursor.execute("SELECT 1")  # LINE raw
    (query,) = rec.db.queries
    assert query.site is not None
    assert query.site[1] == _line_marked("raw")


def test_the_collector_called_at_the_top_of_a_stack_does_not_fail() -> None:
    # A thread whose first Python frame is the collector itself: no frames
    # above it to walk. The query must still run and be counted.
    rec = RequestRecord()
    token = _current.set(rec)
    context = contextvars.copy_context()
    _current.reset(token)
    ran = threading.Event()

    def execute(sql: str, params: Any, many: bool, ctx: dict[str, Any]) -> int:
        ran.set()
        return 1

    _thread.start_new_thread(
        context.run, (collector, execute, "SELECT 1", (), False, {"connection": connection})
    )
    assert ran.wait(5)
    deadline = time.monotonic() + 5
    while not rec.db.queries and time.monotonic() < deadline:
        time.sleep(0.01)
    (query,) = rec.db.queries
    assert query.site is None
    assert query.failed is False


def _line_marked(tag: str) -> int:
    """The line of this file that carries ``# LINE tag``."""
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, text in enumerate(lines, 1) if text.endswith(f"# LINE {tag}"))


def _lines_of(rec: Any) -> list[int]:
    return [q.site[1] for q in rec.db.queries]


def test_each_query_gets_its_own_line_from_the_same_function() -> None:
    with record_request() as rec:
        for _ in range(3):
            User.objects.filter(pk=1).exists()  # LINE user
            Group.objects.filter(pk=1).exists()  # LINE group
    assert _lines_of(rec) == [_line_marked("user"), _line_marked("group")] * 3


def test_the_remembered_lines_stay_bounded_and_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from django_perfkit.collectors import db

    monkeypatch.setattr(db, "_MAX_LINES", 2)
    db._lines.clear()
    with record_request():
        User.objects.filter(pk=1).exists()
    assert len(db._lines) == 1  # remembered
    with record_request() as rec:
        for _ in range(2):
            User.objects.filter(pk=1).exists()  # LINE a
            User.objects.filter(pk=2).exists()  # LINE b
            User.objects.filter(pk=3).exists()  # LINE c
    assert _lines_of(rec) == [_line_marked("a"), _line_marked("b"), _line_marked("c")] * 2
    assert len(db._lines) <= 2


def test_a_settings_change_reaches_the_collector() -> None:
    # The collector reads its settings once, not per query: a change must
    # still take effect (setting_changed resets what it read).
    with record_request() as rec:
        list(User.objects.all())
    changed_settings = {"CAPTURE_CALL_SITES": False, "HIDE_SQL_PARAMS": False}
    with override_settings(PERFKIT=changed_settings), record_request() as changed:
        list(User.objects.filter(username="y"))
    with record_request() as back:
        list(User.objects.filter(username="z"))
    assert rec.db.queries[0].site is not None
    assert changed.db.queries[0].site is None
    assert changed.db.queries[0].params == ("y",)
    assert back.db.queries[0].site is not None
    assert back.db.queries[0].params is None


def test_sql_has_placeholders_and_params_are_hidden_by_default() -> None:
    with record_request() as rec:
        list(User.objects.filter(username="secret-value"))
    (query,) = rec.db.queries
    assert "secret-value" not in query.sql
    assert query.params is None


def test_params_kept_when_asked() -> None:
    with override_settings(PERFKIT={"HIDE_SQL_PARAMS": False}), record_request() as rec:
        list(User.objects.filter(username="visible"))
    assert "visible" in rec.db.queries[0].params


def test_duplicates_are_same_sql_and_same_params() -> None:
    with record_request() as rec:
        for _ in range(3):
            User.objects.filter(username="a").exists()
        User.objects.filter(username="b").exists()
    assert rec.db.count == 4
    assert rec.db.duplicates == 2


def test_details_are_bounded_but_totals_are_not() -> None:
    with override_settings(PERFKIT={"MAX_QUERIES_RECORDED": 5}), record_request() as rec:
        for i in range(12):
            User.objects.filter(pk=i).exists()
    assert rec.db.count == 12
    assert len(rec.db.queries) == 5
    assert rec.db.dropped == 7


def test_the_bound_holds_for_queries_run_while_another_is_running() -> None:
    # A query that starts while another is in flight (nested in it here; another
    # thread sharing the record is the same case) must not both pass the bound.
    nested = []

    def run_another_first(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if not nested:
            nested.append(1)
            Group.objects.using("other").exists()
        return execute(sql, params, many, context)

    with (
        override_settings(PERFKIT={"MAX_QUERIES_RECORDED": 1}),
        record_request() as rec,
        connection.execute_wrapper(run_another_first),
    ):
        User.objects.exists()
    assert nested == [1]
    assert rec.db.count == 2
    assert (len(rec.db.queries), rec.db.dropped) == (1, 1)
    assert rec.db.queries[0].alias == "other"


def test_collection_can_be_switched_off() -> None:
    with override_settings(PERFKIT={"COLLECT_QUERIES": False}), record_request() as rec:
        list(User.objects.all())
    assert rec.db.count == 0


def test_failed_query_is_recorded_and_the_error_propagates() -> None:
    with record_request() as rec, pytest.raises(DatabaseError), connection.cursor() as cursor:
        cursor.execute("SELECT * FROM no_such_table_perfkit")
    (query,) = rec.db.queries
    assert query.failed is True
    assert "no_such_table_perfkit" in query.sql


def test_executemany_counts_once_and_is_marked() -> None:
    with record_request() as rec, connection.cursor() as cursor:
        # DML: SQLite refuses executemany() for a SELECT.
        cursor.executemany("UPDATE auth_group SET name = name WHERE id = %s", [(1,), (2,)])
    (query,) = rec.db.queries
    assert query.many is True


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_queries_from_sync_to_async_threads_land_in_the_record() -> None:
    def orm_in_thread() -> int:
        try:
            return User.objects.count()
        finally:
            connections.close_all()

    with record_request() as rec:
        async_to_sync(sync_to_async(orm_in_thread, thread_sensitive=False))()
    assert rec.db.count == 1


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_a_thread_outside_the_request_is_not_counted() -> None:
    def background() -> None:
        User.objects.count()
        connections.close_all()

    with record_request() as rec:
        t = threading.Thread(target=background)
        t.start()
        t.join()
    assert rec.db.count == 0


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
async def test_async_orm_queries_are_counted() -> None:
    with record_request() as rec:
        assert await User.objects.acount() == 0
        assert await User.objects.filter(username="x").aexists() is False
    assert rec.db.count == 2


def test_unhashable_params_do_not_break_the_query() -> None:
    # A list inside the params tuple (an array value, say) cannot be hashed.
    with record_request() as rec, connection.cursor() as cursor:
        cursor.execute("SELECT %s, %s", ("a", 1))
        params_hash = rec.db.queries[0].params_hash
        from django_perfkit.collectors.db import _params_hash

        assert _params_hash(("a", [1, 2])) == _params_hash(("a", [1, 2]))
        assert _params_hash(("a", [1, 2])) != _params_hash(("a", [1, 3]))
    assert isinstance(params_hash, int)
