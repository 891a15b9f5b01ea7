"""Audit: lineage, user history, alias timelines, run costs, blast radius, evaluation diffs,
per-user purge and retention.

``api.AuditMixin`` adds these to ``Registry``; ``queries`` holds the SQL (recursive CTEs that run
identically on SQLite and Postgres), ``deletion`` the purge, ``retention`` the rules of
``gc --keep-last/--older-than``. Imports go one way: registry -> audit -> db/store.
"""
