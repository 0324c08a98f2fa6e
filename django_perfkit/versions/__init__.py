"""Version tokens: how perfkit knows that cached data has changed.

One mechanism, shared by the queryset ``.cache()`` and cache on write: entries
record the tokens they were computed under (:mod:`.tokens`); every write bumps
the tokens of what it changed (:mod:`.writes`, an execute wrapper).
"""

from __future__ import annotations

from django_perfkit.versions.tokens import Tokens, abump, bump, ready_for_reads, tokens_for

__all__ = ["Tokens", "abump", "bump", "ready_for_reads", "tokens_for"]
