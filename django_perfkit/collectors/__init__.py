"""Collectors write into the request record while a request runs.

Each collector is one module: ``db`` (database queries). Later features add
theirs (cache, rate limits) beside it.
"""
