"""The N+1 corpus of ``bench/query_guard.py``: models, seed data and scenarios (Django only)."""
