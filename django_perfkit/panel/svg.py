"""Inline SVG charts for the panel: no JavaScript, no front-end build.

Every text that goes into the markup (labels, titles) is escaped by
``format_html``; numbers are formatted by this module.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

__all__ = ["bar_chart", "sparkline"]


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> SafeString:
    """A line of ``values`` (oldest first), scaled to its own maximum."""
    if not values:
        return SafeString("")
    top = max(values) or 1
    step = width / max(1, len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 1 - (value / top) * (height - 2):.1f}"
        for i, value in enumerate(values)
    )
    return format_html(
        '<svg class="spark" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" '
        'points="{}"/></svg>',
        width,
        height,
        width,
        height,
        f"per minute, peak {max(values):g}",
        points,
    )


def bar_chart(
    values: Sequence[float],
    labels: Sequence[str],
    *,
    highlight: Sequence[float] | None = None,
    unit: str = "requests",
    highlight_unit: str = "errors",
    width: int = 720,
    height: int = 120,
) -> SafeString:
    """One bar per value, each with a tooltip (``<title>``); ``highlight`` (errors,
    say) is drawn over the bottom of each bar."""
    if not values:
        return SafeString("")
    top = max(values) or 1
    slot = width / len(values)
    bar = max(1.0, slot - 2)
    rows = []
    for i, value in enumerate(values):
        x = i * slot + 1
        h = (value / top) * (height - 14)
        extra = highlight[i] if highlight is not None else 0
        eh = (extra / top) * (height - 14) if extra else 0
        title = f"{labels[i]}: {value:g} {unit}" + (
            f", {extra:g} {highlight_unit}" if extra else ""
        )
        rows.append(
            (f"{x:.1f}", f"{height - h:.1f}", f"{bar:.1f}", f"{h:.1f}", title, f"{height - eh:.1f}",
             f"{eh:.1f}")
        )  # fmt: skip
    bars = format_html_join(
        "",
        '<g><title>{}</title><rect class="bar" x="{}" y="{}" width="{}" height="{}"/>'
        '<rect class="bad" x="{}" y="{}" width="{}" height="{}"/></g>',
        ((t, x, y, w, h, x, ey, w, eh) for x, y, w, h, t, ey, eh in rows),
    )
    return format_html(
        '<svg class="chart" width="100%" height="{}" viewBox="0 0 {} {}" '
        'preserveAspectRatio="none" role="img" aria-label="{}">'
        '<text x="2" y="10" class="axis">{}</text>{}</svg>',
        height,
        width,
        height,
        f"{unit} per minute",
        f"peak {top:g}/min",
        bars,
    )
