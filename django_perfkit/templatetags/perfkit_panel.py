"""Template filters of the perfkit panel (``{% load perfkit_panel %}``)."""

from __future__ import annotations

import math

from django import template

register = template.Library()


@register.filter
def ms(value: float | None) -> str:
    """A latency in milliseconds: ``-`` when unknown, ``>10000`` for the open last bucket."""
    if value is None:
        return "-"
    if math.isinf(value):
        return ">10000"
    return str(int(value)) if value == int(value) else f"{value:.1f}"
