"""Services: one per concern, the only code that opens catalogue sessions.

Each service is built on the ``Context`` of an open registry and each public method is one unit of
work (one transaction; tensor bytes written and fsynced before the rows commit):

* ``models.ModelService``: base models and tasks;
* ``users.UserService``: users;
* ``writes.SetWriter``: imports, streaming writes, the commit of a version;
* ``reads.SetReader``: set resolution and prompt reads (``resolution`` holds the chains and manifests);
* ``aliases.AliasService``: aliases and tags;
* ``artifacts.ArtifactService``: adapters and heads;
* ``runs.RunService``: runs, evaluations, the audit log;
* ``audit.AuditService``: lineage, user history, alias timelines, costs, blast radius, diffs;
* ``admin.AdminService``: doctor, gc, retention, purge.

The ``Registry`` facade delegates to them; training and migration receive them, never the facade.
"""
