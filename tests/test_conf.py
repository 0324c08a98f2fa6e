from __future__ import annotations

from django.test import override_settings

from django_perfkit.conf import DEFAULTS, get_settings


def test_defaults_when_perfkit_is_absent() -> None:
    with override_settings(PERFKIT={}):
        s = get_settings()
    assert s.server_timing == "all"
    assert s.redis_cache_alias == "default"
    assert s.redis_timeout == DEFAULTS["REDIS_TIMEOUT"] == 0.05
    assert s.redis_spin == DEFAULTS["REDIS_SPIN"] == 0.0001
    assert s.key_prefix == "perfkit"
    assert s.redis_alias_explicit is False


def test_override_settings_resets_the_cached_view() -> None:
    before = get_settings()
    with override_settings(PERFKIT={"SERVER_TIMING": "off", "REDIS_TIMEOUT": 0.2}):
        inside = get_settings()
        assert inside.server_timing == "off"
        assert inside.redis_timeout == 0.2
    after = get_settings()
    assert after.server_timing == before.server_timing
    assert inside is not before


def test_cached_between_calls() -> None:
    assert get_settings() is get_settings()


def test_bad_values_fall_back_to_defaults_at_runtime() -> None:
    # The checks report these at startup; a request must still not crash on them.
    bad = {
        "SERVER_TIMING": "sometimes",
        "REDIS_TIMEOUT": -1,
        "ENABLED": "yes",
        "MAX_QUERIES_RECORDED": "many",
    }
    with override_settings(PERFKIT=bad):
        s = get_settings()
    assert s.server_timing == "all"
    assert s.redis_timeout == 0.05
    assert s.enabled is True
    assert s.max_queries_recorded == 1000


def test_perfkit_not_a_dict_is_treated_as_empty_at_runtime() -> None:
    with override_settings(PERFKIT=["nope"]):
        assert get_settings().server_timing == "all"


def test_explicit_none_alias() -> None:
    with override_settings(PERFKIT={"REDIS_CACHE_ALIAS": None}):
        s = get_settings()
    assert s.redis_cache_alias is None
    assert s.redis_alias_explicit is True
