"""Demo news site that exercises django-perfkit (not part of the distributed package)."""

from __future__ import annotations
