"""SQL fingerprints: one text for every execution of "the same query".

Two queries have the same fingerprint when they differ only in values: string
and number literals, placeholders, the length of an ``IN (...)`` list or of a
multi-row ``VALUES`` list, and savepoint names (Django numbers them per
thread, so they differ between runs). What is left is the query's shape,
stable across runs and machines: what a report groups by, and what a budget
file can compare.
"""

from __future__ import annotations

import re

__all__ = ["fingerprint"]

_STRING = re.compile(r"'(?:[^']|'')*'")
# A number that is not part of a name (t1, "col2", $1 are left to the rules below).
_NUMBER = re.compile(r"(?<![\w\"$.])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w\"])")
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|\$\d+|\?|(?<![:\w]):[A-Za-z_]\w*")
_SAVEPOINT = re.compile(
    r"\b(SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\s+[`\"]?\w+[`\"]?", re.I
)
_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)*\s*\)")
_ROWS = re.compile(r"\(\.\.\.\)(?:\s*,\s*\(\.\.\.\))+")
_SPACE = re.compile(r"\s+")

_cache: dict[str, str] = {}
_CACHE_MAX = 4096


def fingerprint(sql: str) -> str:
    """The shape of ``sql``: values become ``?``, value lists ``(...)``.

    ``SELECT ... WHERE id IN (%s, %s, %s)`` and ``... IN (%s)`` both give
    ``SELECT ... WHERE id IN (...)``. Kept per SQL text (Django sends the same
    text with other parameters), so a repeated query costs a dict lookup.
    """
    found = _cache.get(sql)
    if found is not None:
        return found
    text = _SAVEPOINT.sub(lambda m: f"{m.group(1).upper()} ?", sql)
    text = _STRING.sub("?", text)
    text = _PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _LIST.sub("(...)", text)
    text = _ROWS.sub("(...)", text)
    text = _SPACE.sub(" ", text).strip()
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[sql] = text
    return text
