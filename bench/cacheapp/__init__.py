"""The models of bench/cache.py: the same tables for every competitor."""
