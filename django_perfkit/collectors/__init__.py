"""Collectors write into the request record while a request runs.

Each collector is one module: ``db`` (database queries) and ``templates``
(template rendering time). The cache and the rate limits write their numbers
into the record where they happen.
"""
