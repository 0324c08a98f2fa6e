from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import Error, Warning
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_perfkit.checks import MIDDLEWARE_PATH, check_middleware, check_settings


def ids(perfkit: Any, **extra: Any) -> list[str]:
    with override_settings(PERFKIT=perfkit, **extra):
        return [m.id for m in check_settings()]


def test_default_test_settings_pass() -> None:
    assert check_settings() == []
    assert check_middleware() == []


def test_checks_are_registered() -> None:
    # Through the real command, so an unregistered check would not fire.
    with (
        override_settings(PERFKIT={"SERVER_TIMING": "sometimes"}),
        pytest.raises(SystemCheckError, match="perfkit.E005"),
    ):
        call_command("check")


def test_e001_not_a_dict() -> None:
    assert ids(["SERVER_TIMING"]) == ["perfkit.E001"]


def test_e002_unknown_alias() -> None:
    with override_settings(PERFKIT={"REDIS_CACHE_ALIAS": "sessions"}):
        (msg,) = check_settings()
    assert msg.id == "perfkit.E002"
    assert "'sessions'" in msg.msg and "'default'" in msg.msg
    assert "None" in msg.hint


def test_e003_explicit_alias_not_django_redis() -> None:
    with override_settings(PERFKIT={"REDIS_CACHE_ALIAS": "locmem"}):
        (msg,) = check_settings()
    assert isinstance(msg, Error)
    assert msg.id == "perfkit.E003"
    assert "django_redis.cache.RedisCache" in msg.hint


def test_w004_default_alias_not_django_redis_is_a_warning() -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(PERFKIT={}, CACHES=caches):
        (msg,) = check_settings()
    assert isinstance(msg, Warning)
    assert msg.id == "perfkit.W004"


def test_none_alias_means_no_redis_and_no_message() -> None:
    caches = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert ids({"REDIS_CACHE_ALIAS": None}, CACHES=caches) == []


def test_django_redis_subclass_is_accepted() -> None:
    caches = {"default": {"BACKEND": "tests.test_checks.MyRedisCache", "LOCATION": "redis://x"}}
    assert ids({"REDIS_CACHE_ALIAS": "default"}, CACHES=caches) == []


from django_redis.cache import RedisCache  # noqa: E402


class MyRedisCache(RedisCache):
    pass


@pytest.mark.parametrize("value", [-1, "50ms", None, True])
@pytest.mark.parametrize("name", ["REDIS_TIMEOUT", "REDIS_SPIN"])
def test_e004_bad_timeout(name: str, value: Any) -> None:
    assert ids({name: value}) == ["perfkit.E004"]


def test_e004_names_the_key_and_an_example() -> None:
    with override_settings(PERFKIT={"BREAKER_COOLDOWN": -5}):
        (msg,) = check_settings()
    assert 'PERFKIT["BREAKER_COOLDOWN"]' in msg.msg
    assert "= 5.0" in msg.hint


def test_zero_timeout_is_allowed() -> None:
    assert ids({"REDIS_CONNECT_TIMEOUT": 0}) == []


def test_e005_unknown_mode() -> None:
    with override_settings(PERFKIT={"SERVER_TIMING": "admins"}):
        (msg,) = check_settings()
    assert msg.id == "perfkit.E005"
    assert '"staff"' in msg.hint and '"internal"' in msg.hint


@pytest.mark.parametrize("key", ["ENABLED", "HIDE_SQL_PARAMS", "COLLECT_QUERIES"])
def test_e006_switch_not_bool(key: str) -> None:
    assert ids({key: "false"}) == ["perfkit.E006"]


@pytest.mark.parametrize(
    ("key", "value"),
    [("MAX_QUERIES_RECORDED", -1), ("MAX_QUERIES_RECORDED", 1.5), ("BREAKER_FAILURES", 0)],
)
def test_e007_bad_count(key: str, value: Any) -> None:
    assert ids({key: value}) == ["perfkit.E007"]


@pytest.mark.parametrize("url", ["http://localhost:6379", "localhost:6379", 6379])
def test_e008_bad_redis_url(url: Any) -> None:
    assert ids({"REDIS_URL": url}) == ["perfkit.E008"]


def test_redis_url_replaces_the_alias() -> None:
    # With REDIS_URL the alias is not used, so a missing alias is no error.
    assert ids({"REDIS_URL": "redis://127.0.0.1:7000/0", "REDIS_CACHE_ALIAS": "nope"}) == []


@pytest.mark.parametrize("prefix", ["", "my prefix", "a{b}", 5])
def test_e009_bad_key_prefix(prefix: Any) -> None:
    assert ids({"KEY_PREFIX": prefix}) == ["perfkit.E009"]


def test_e010_cluster_without_url() -> None:
    assert ids({"REDIS_CLUSTER": True}) == ["perfkit.E010"]


def test_w001_unknown_key_suggests_the_right_one() -> None:
    with override_settings(PERFKIT={"SERVER_TIMMING": "all"}):
        (msg,) = check_settings()
    assert msg.id == "perfkit.W001"
    assert 'Did you mean "SERVER_TIMING"?' in msg.hint


def test_w002_middleware_missing() -> None:
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        assert [m.id for m in check_middleware()] == ["perfkit.W002"]


def test_w003_middleware_not_first() -> None:
    mw = ["django.middleware.security.SecurityMiddleware", MIDDLEWARE_PATH]
    with override_settings(MIDDLEWARE=mw):
        (msg,) = check_middleware()
    assert msg.id == "perfkit.W003"
    assert "SecurityMiddleware" in msg.msg


@pytest.mark.parametrize(
    "rules",
    [
        "not-a-list",
        [{"rate": "5/m"}],
        [{"path": "/api/", "rate": "5/x"}],
        [{"path": "/api/", "rate": "5/m", "key": "nope"}],
        [{"path": "/api/", "rate": "5/m", "algorithm": "leaky"}],
        [{"path": "/api/", "rate": "5/m", "bogus": 1}],
        ["/api/"],
    ],
)
def test_e011_bad_rules(rules: Any) -> None:
    assert ids({"RATELIMITS": rules}) == ["perfkit.E011"]


def test_e011_names_the_rule_and_the_fix() -> None:
    with override_settings(
        PERFKIT={"RATELIMITS": [{"path": "/a/", "rate": "1/m"}, {"path": "/b/", "rate": "x"}]}
    ):
        (msg,) = check_settings()
    assert 'PERFKIT["RATELIMITS"][1]' in msg.msg and "malformed" in msg.msg


def test_good_rules_pass() -> None:
    rules = [{"path": "/api/", "rate": "100/m", "key": "user_or_ip", "method": "GET"}]
    assert ids({"RATELIMITS": rules}) == []


@pytest.mark.parametrize("key", ["RATELIMIT_ALGORITHM", "RATELIMIT_FAIL"])
def test_e012_unknown_algorithm_or_fail(key: str) -> None:
    assert ids({key: "sometimes"}) == ["perfkit.E012"]


def test_e013_bad_trusted_proxy() -> None:
    assert ids({"TRUSTED_PROXIES": ["10.0.0.0/8", "proxy.internal"]}) == ["perfkit.E013"]
    assert ids({"TRUSTED_PROXIES": ["10.0.0.0/8", "::1", "192.168.1.1"]}) == []


@pytest.mark.parametrize(
    ("key", "value"), [("RATELIMIT_IPV4_MASK", 33), ("RATELIMIT_IPV6_MASK", 0)]
)
def test_e014_mask_out_of_range(key: str, value: int) -> None:
    assert ids({key: value}) == ["perfkit.E014"]


def test_e015_ratelimit_view_not_importable() -> None:
    assert ids({"RATELIMIT_VIEW": "nowhere.view"}) == ["perfkit.E015"]
    assert ids({"RATELIMIT_VIEW": "tests.test_ratelimit.ratelimited_view"}) == []


def test_e013_trusted_proxies_as_a_string() -> None:
    with override_settings(PERFKIT={"TRUSTED_PROXIES": "10.0.0.0/8"}):
        (msg,) = check_settings()
    assert msg.id == "perfkit.E013" and "must be a list" in msg.msg


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        ("300", ["perfkit.E016"]),
        ({"DEFAULT_TIMEOUT": 0}, ["perfkit.E016"]),
        ({"DEFAULT_TIMEOUT": 1.5}, ["perfkit.E016"]),
        ({"MAX_BYTES": -1}, ["perfkit.E016"]),
        ({"LOCK_WAIT": "1s"}, ["perfkit.E016"]),
        ({"ENABLED": "yes"}, ["perfkit.E016"]),
        ({"TOKEN_TTL": 0}, ["perfkit.E016"]),
        ({"DEFER_DELAY": -0.1}, ["perfkit.E016"]),
        ({"DEFER_MAX_PENDING": 1.5}, ["perfkit.E016"]),
        ({"MODELS": ["news.Article"]}, ["perfkit.E016"]),
        ({"MODELS": {"news.Article": 0}}, ["perfkit.E016"]),
        ({"MODELS": {"news.Articel": 60}}, ["perfkit.E017"]),
        ({"MODELS": {"news.ArticleStats": 60}}, ["perfkit.W005"]),
        ({"DEFAULT_TIMOUT": 60}, ["perfkit.W006"]),
    ],
)
def test_cache_settings_checks(cache: Any, expected: list[str]) -> None:
    assert ids({"CACHE": cache}) == expected


def test_good_cache_settings_pass() -> None:
    cache = {
        "ENABLED": True,
        "DEFAULT_TIMEOUT": 60,
        "MODELS": {"news.Category": 600, "news.Article": 60},
        "MAX_BYTES": 0,
        "LOCK_TIMEOUT": 5,
        "LOCK_WAIT": 0.5,
        "EARLY_REFRESH_BETA": 0,
        "TOKEN_TTL": 3600,
        "DEFER_DELAY": 0,
        "DEFER_MAX_PENDING": 100,
    }
    assert ids({"CACHE": cache}) == []


def test_cache_messages_name_the_fix() -> None:
    with override_settings(PERFKIT={"CACHE": {"MODELS": {"news.ArticleStats": 60}}}):
        (msg,) = check_settings()
    assert "CachedManager" in (msg.hint or "")


@pytest.mark.parametrize(
    ("guard", "expected"),
    [
        ("raise", ["perfkit.E018"]),
        ({"MODE": "loud"}, ["perfkit.E018"]),
        ({"NPLUSONE_THRESHOLD": 1}, ["perfkit.E018"]),
        ({"NPLUSONE_THRESHOLD": "2"}, ["perfkit.E018"]),
        ({"MAX_QUERIES": -1}, ["perfkit.E018"]),
        ({"MAX_DUPLICATES": 1.5}, ["perfkit.E018"]),
        ({"UNUSED_PREFETCHES": "no"}, ["perfkit.E018"]),
        ({"ALLOWLIST": {"relation": "news.Article.author"}}, ["perfkit.E018"]),
        ({"ALLOWLIST": [{"relation": 1}]}, ["perfkit.E018"]),
        ({"ALLOWLIST": [{}]}, ["perfkit.E018"]),
        ({"ALLOWLIST": [{"file": "news/*"}]}, ["perfkit.E018"]),
        ({"MAX_QUERY": 10}, ["perfkit.W007"]),
    ],
)
def test_query_guard_settings_checks(guard: Any, expected: list[str]) -> None:
    assert ids({"QUERY_GUARD": guard}) == expected


def test_good_query_guard_settings_pass() -> None:
    guard = {
        "MODE": "warn",
        "NPLUSONE_THRESHOLD": 3,
        "MAX_QUERIES": 50,
        "MAX_DUPLICATES": None,
        "UNUSED_PREFETCHES": False,
        "ALLOWLIST": [{"relation": "news.Article.author", "location": "news/views.py:*"}],
    }
    assert ids({"QUERY_GUARD": guard}) == []
    assert ids({"QUERY_GUARD": {"MODE": None}}) == []


def test_query_guard_error_names_the_fix() -> None:
    with override_settings(PERFKIT={"QUERY_GUARD": {"MODE": "loud"}}):
        (message,) = check_settings()
    assert '"log", "warn", "raise", "off"' in (message.hint or "")


@pytest.mark.parametrize(
    ("profiler", "expected"),
    [
        ([], ["perfkit.E019"]),
        ({"SLOW_REQUEST_MS": -1}, ["perfkit.E019"]),
        ({"SLOW_REQUEST_MS": "1s"}, ["perfkit.E019"]),
        ({"INTERVAL": 0}, ["perfkit.E019"]),
        ({"TTL": 0}, ["perfkit.E019"]),
        ({"MIN_INTERVAL": True}, ["perfkit.E019"]),
        ({"HEADER": "X Perfkit"}, ["perfkit.E019"]),
        ({"HEADER": None}, ["perfkit.E019"]),
        ({"SAMPLE_SLOW": -1}, ["perfkit.E019"]),
        ({"SAMPLE_SLOW": 0.5}, ["perfkit.E019"]),
        ({"SLOW_MS": 10}, ["perfkit.W008"]),
    ],
)
def test_profiler_settings_checks(profiler: Any, expected: list[str]) -> None:
    assert ids({"PROFILER": profiler}) == expected


def test_good_profiler_settings_pass() -> None:
    profiler = {
        "SLOW_REQUEST_MS": 500,
        "SLOW_KEEP": 0,
        "HEADER": "",
        "INTERVAL": 0.005,
        "MAX_PROFILES": 10,
        "TTL": 600,
        "MIN_INTERVAL": 0,
        "TOKEN_MAX_TTL": 3600,
    }
    assert ids({"PROFILER": profiler}) == []


@pytest.mark.parametrize(
    ("fleet", "expected"),
    [
        (True, ["perfkit.E020"]),
        ({"ENABLED": "yes"}, ["perfkit.E020"]),
        ({"WINDOW_MINUTES": 0}, ["perfkit.E020"]),
        ({"FLUSH_INTERVAL": 0}, ["perfkit.E020"]),
        ({"MAX_ROUTES": 1.5}, ["perfkit.E020"]),
        ({"WINDOW": 60}, ["perfkit.W009"]),
    ],
)
def test_fleet_settings_checks(fleet: Any, expected: list[str]) -> None:
    assert ids({"FLEET": fleet}) == expected


def test_good_fleet_settings_pass() -> None:
    fleet = {"ENABLED": True, "WINDOW_MINUTES": 30, "FLUSH_INTERVAL": 0.5, "MAX_ROUTES": 100}
    assert ids({"FLEET": fleet}) == []


@pytest.mark.parametrize(
    ("indexes", "expected"),
    [
        ("on", ["perfkit.E021"]),
        ({"EXPLAIN_MS": -1}, ["perfkit.E021"]),
        ({"MIN_ROWS": 1.5}, ["perfkit.E021"]),
        ({"ENABLED": 1}, ["perfkit.E021"]),
        ({"EXPLAIN": 100}, ["perfkit.W010"]),
    ],
)
def test_indexes_settings_checks(indexes: Any, expected: list[str]) -> None:
    assert ids({"INDEXES": indexes}) == expected
    assert ids({"INDEXES": {"ENABLED": False, "EXPLAIN_MS": 0, "MIN_ROWS": 0}}) == []


@pytest.mark.parametrize(
    ("panel", "expected"),
    [
        ("staff", ["perfkit.E022"]),
        ({"PERMISSION": "view_panel"}, ["perfkit.E022"]),
        ({"PERMISSION": 3}, ["perfkit.E022"]),
        ({"SIGNAL_PERMISSION": "a.b.c"}, ["perfkit.E022"]),
        ({"SHOW_SQL_PARAMS": "yes"}, ["perfkit.E022"]),
        ({"REFRESH_SECONDS": -1}, ["perfkit.E022"]),
        ({"REFRESH_SECONDS": 0.2}, ["perfkit.E022"]),  # each refresh reads Redis
        ({"MINUTES": 0}, ["perfkit.E022"]),
        ({"DATABASE_ALIAS": "replica"}, ["perfkit.E022"]),
        ({"PERMISION": "auth.view_user"}, ["perfkit.W011"]),
    ],
)
def test_panel_settings_checks(panel: Any, expected: list[str]) -> None:
    assert ids({"PANEL": panel}) == expected


def test_panel_check_names_the_fix() -> None:
    with override_settings(PERFKIT={"PANEL": {"DATABASE_ALIAS": "replica"}}):
        (message,) = check_settings()
    assert "'default'" in (message.hint or "")
    with override_settings(PERFKIT={"PANEL": {"PERMISION": "auth.view_user"}}):
        (message,) = check_settings()
    assert message.hint == 'Did you mean "PERMISSION"?'


def test_good_panel_settings_pass() -> None:
    panel = {
        "PERMISSION": "auth.view_user",
        "SIGNAL_PERMISSION": None,
        "SHOW_SQL_PARAMS": True,
        "REFRESH_SECONDS": 0,
        "MINUTES": 60,
        "DATABASE_ALIAS": "other",
    }
    assert ids({"PANEL": panel}) == []
