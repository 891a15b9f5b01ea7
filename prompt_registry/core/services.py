"""The services of one open registry, bundled: what training, evaluation and migration receive
(typed, never the facade)."""

from __future__ import annotations

import dataclasses

from .._context import Context
from .admin import AdminService
from .aliases import AliasService
from .artifacts import ArtifactService
from .audit import AuditService
from .models import ModelService
from .plans import PlanService
from .reads import SetReader
from .runs import RunService
from .users import UserService
from .writes import SetWriter


@dataclasses.dataclass(frozen=True)
class Services:
    ctx: Context
    models: ModelService
    users: UserService
    writes: SetWriter
    reads: SetReader
    aliases: AliasService
    artifacts: ArtifactService
    runs: RunService
    audit: AuditService
    admin: AdminService
    plans: PlanService

    @classmethod
    def build(cls, ctx: Context) -> Services:
        return cls(ctx, ModelService(ctx), UserService(ctx), SetWriter(ctx), SetReader(ctx), AliasService(ctx),
                   ArtifactService(ctx), RunService(ctx), AuditService(ctx), AdminService(ctx), PlanService(ctx))
