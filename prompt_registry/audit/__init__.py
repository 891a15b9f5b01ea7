"""Audit: lineage, user history, alias timelines, run costs, blast radius, evaluation diffs,
per-user purge and retention.

The catalogue side of auditing: ``queries`` holds the SQL (recursive CTEs that run identically
on SQLite and Postgres), ``deletion`` the purge, ``retention`` the rules of
``gc --keep-last/--older-than``, ``entities`` what they return. The services that run them as
units of work are ``core.audit.AuditService`` and ``core.admin.AdminService``. Imports go one way:
core -> audit -> db/store.
"""
