"""Template rendering time: the ``template`` section of the request record.

Django renders a template through its backend's ``Template.render`` (a
``TemplateResponse`` when the handler renders it, ``render()``,
``render_to_string()``). perfkit wraps that one method of Django's own
template backend, once, at startup: each top-level render adds its time to
the record's ``template`` section (so ``Server-Timing: template;dur=...``,
the slow-request log and the panel show it). ``{% include %}`` and
``{% extends %}`` happen inside that render and are part of its time, not
counted again; so are the queries a template runs (a queryset evaluated in
a ``{% for %}``), which the ``db`` entry counts too. Outside a request, or
with ``PERFKIT["ENABLED"]`` off, a render costs one context-variable read.

Other backends (Jinja2) are not timed.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from django_perfkit.record import _current

__all__ = ["SECTION", "install"]

#: The record's section label for template rendering.
SECTION = "template"

_installed = False


def install() -> None:
    """Wrap Django's template backend's ``Template.render`` (idempotent)."""
    global _installed
    if _installed:
        return
    from django.template.backends.django import Template

    render = Template.render

    @functools.wraps(render)
    def timed_render(self: Any, context: Any = None, request: Any = None) -> Any:
        record = _current.get()
        if record is None:
            return render(self, context, request)
        started = time.perf_counter()
        try:
            return render(self, context, request)
        finally:
            record.add_section(SECTION, time.perf_counter() - started)

    timed_render.__perfkit_original__ = render  # type: ignore[attr-defined]
    Template.render = timed_render  # type: ignore[method-assign]
    _installed = True
