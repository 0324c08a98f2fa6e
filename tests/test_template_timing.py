"""The ``template`` section: the time Django's template backend spends rendering."""

from __future__ import annotations

from typing import Any

import pytest
from django.template import engines
from django.template.loader import render_to_string
from django.test import Client

from django_perfkit import record_request
from django_perfkit.collectors.templates import SECTION


def test_a_render_inside_a_record_is_a_template_section() -> None:
    with record_request() as record:
        text = render_to_string("django_perfkit/toolbar/perfkit.html", {"missing": True})
        engines["django"].from_string("{{ x }}").render({"x": 1})
    assert "PerfkitMiddleware" in text  # it rendered
    section = record.sections[SECTION]
    assert section.count == 2
    assert section.time > 0


def test_a_render_outside_a_request_records_nothing_and_works() -> None:
    assert engines["django"].from_string("{{ x }}!").render({"x": 3}) == "3!"


def test_a_failing_render_is_still_timed_and_raises() -> None:
    template = engines["django"].from_string("{% for a in broken %}{{ a }}{% endfor %}")

    class Broken:
        def __iter__(self) -> Any:
            raise RuntimeError("the template's data failed")

    with record_request() as record, pytest.raises(RuntimeError):
        template.render({"broken": Broken()})
    assert record.sections[SECTION].count == 1


@pytest.mark.django_db
def test_server_timing_has_the_template_entry(client: Client, settings: Any) -> None:
    settings.PERFKIT = {**settings.PERFKIT, "SERVER_TIMING": "all"}
    response = client.get("/articles/")
    assert response.status_code == 200
    assert "template;dur=" in response["Server-Timing"]
    plain = client.get("/healthz")  # no template: no entry
    assert "template;" not in plain.get("Server-Timing", "")
