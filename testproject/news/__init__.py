"""The demo site's news app (label ``news``)."""

from __future__ import annotations
