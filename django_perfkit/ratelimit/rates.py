"""Rate strings: everything django-ratelimit accepts.

``"5/m"``, ``"100/10s"``, ``"1000/d"``, ``"10/5m"``; a bare number as the unit
means seconds (``"10/30"``); units may be spelled out as django-ratelimit and
DRF allow (``"5/min"``, ``"100/hour"``, ``"1000/day"``: the first letter
counts). ``None`` means no limit. A callable ``(group, request)``, or a dotted
path to one, may return a rate string, a ``(count, seconds)`` tuple or None.
"""

from __future__ import annotations

import re
from typing import Any

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(?:([smhd])[a-z]*)?\s*$", re.IGNORECASE)

#: Longest period accepted: ten years. Beyond that Redis's integer TTLs overflow.
MAX_PERIOD = 10 * 366 * 86400


class InvalidRate(ValueError):
    pass


def parse_rate(rate: Any) -> tuple[int, int]:
    """``(count, seconds)`` for a rate string or tuple; raises :class:`InvalidRate`."""
    if isinstance(rate, tuple) and len(rate) == 2:
        count, seconds = rate
        if (
            isinstance(count, int)
            and isinstance(seconds, int)
            and not isinstance(count, bool)
            and count >= 0
            and 0 < seconds <= MAX_PERIOD
        ):
            return count, seconds
        raise InvalidRate(f"rate tuple {rate!r} must be (count >= 0, seconds > 0)")
    if not isinstance(rate, str):
        raise InvalidRate(f"rate {rate!r} is not a string like '5/m' or '100/10s'")
    match = _RATE.match(rate)
    if match is None:
        raise InvalidRate(
            f"rate {rate!r} is malformed; write COUNT/PERIOD, e.g. '5/m', '100/10s', '1000/d'"
        )
    count, multiplier, unit = match.groups()
    if not multiplier and not unit:
        raise InvalidRate(f"rate {rate!r} has no period; write e.g. '{count}/m'")
    seconds = int(multiplier or 1) * UNITS[(unit or "s").lower()]
    if seconds <= 0:
        raise InvalidRate(f"rate {rate!r} has a period of zero seconds")
    if seconds > MAX_PERIOD:
        raise InvalidRate(f"rate {rate!r} has a period longer than ten years")
    return int(count), seconds
