"""Token-pass and time estimates for the edges of the migration graph.

Every estimate says where it came from: ``calibrated`` from the cost ledger of a run already
recorded on the same models (scaled by the users it covered), or a ``prior`` built from the
defaults (``TrainConfig``, ``MigrationConfig``), the users, rows per user and tokens per example
(themselves calibrated when any run on the model recorded them). Reusing a stored adapter runs no
backbone: its token-passes are 0 and its time is the mapping's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..core.services import Services
from ..entities import Run
from ..migration.config import MigrationConfig
from ..training.config import TrainConfig

PRIOR_TOKENS_PER_EXAMPLE = 16.0  # the default template around a short item title, with its prompt slot
PRIOR_ROWS_PER_USER = 30.0
PRIOR_TOKEN_PASSES_PER_SECOND = 50_000.0  # tiny models on one CPU core; calibrated per model from recorded runs
MAP_SECONDS_PER_USER = 2e-5


@dataclasses.dataclass
class CostModel:
    """Estimates for one task, from the runs recorded in the catalogue (read once)."""

    services: Services
    task: str
    runs: list[Run] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.runs = [r for r in self.services.runs.list_runs(limit=10_000) if r.task == self.task and r.status == "succeeded"]

    # -- calibration facts ------------------------------------------------------------------------
    def _model_runs(self, model: str) -> list[Run]:
        return [r for r in self.runs if r.model == model and r.kind in ("train", "migrate") and (r.examples_seen or 0) > 0]

    def tokens_per_example(self, model: str) -> tuple[float, str]:
        runs = self._model_runs(model)
        if runs:
            tokens = sum(r.forward_tokens or 0 for r in runs) / max(sum(r.examples_seen or 0 for r in runs), 1)
            return tokens, f"calibrated from {len(runs)} run(s) on {model}"
        return PRIOR_TOKENS_PER_EXAMPLE, "prior"

    def throughput(self, model: str) -> tuple[float, str]:
        runs = [r for r in self._model_runs(model) if (r.wall_seconds or 0) > 0]
        if runs:
            passes = sum((r.forward_tokens or 0) + (r.backward_tokens or 0) for r in runs)
            return passes / sum(r.wall_seconds or 0 for r in runs), f"calibrated from {len(runs)} run(s) on {model}"
        return PRIOR_TOKEN_PASSES_PER_SECOND, "prior"

    def rows_per_user(self) -> tuple[float, str]:
        for r in self.runs:
            if r.kind == "train" and r.config.get("n_users") and r.config.get("n_train"):
                return float(r.config["n_train"]) / float(r.config["n_users"]), f"calibrated from run {r.id}"
        return PRIOR_ROWS_PER_USER, "prior"

    # -- edges --------------------------------------------------------------------------------------
    def retrain(self, target: str, users: int, config: TrainConfig | None = None) -> dict[str, Any]:
        """A from-scratch training of ``users``' prompts on ``target``."""
        seconds_rate, rate_basis = self.throughput(target)
        for r in self.runs:
            if r.kind == "train" and r.model == target and not r.config.get("freeze_prompts") and r.config.get("n_users"):
                passes = ((r.forward_tokens or 0) + (r.backward_tokens or 0)) * users / float(r.config["n_users"])
                return _estimate(passes, seconds_rate, f"calibrated from run {r.id} (scaled by users)", rate_basis,
                                 {"users": users, "run": r.id})
        config = config or TrainConfig()
        tokens, token_basis = self.tokens_per_example(target)
        rows, rows_basis = self.rows_per_user()
        train_rows = users * rows * (1 - config.valid_fraction)
        valid_rows = users * rows * config.valid_fraction
        passes = config.epochs * (2 * train_rows + valid_rows) * tokens
        return _estimate(passes, seconds_rate, "prior", rate_basis, {"users": users, "epochs": config.epochs, "rows_per_user": rows,
                                                                  "rows_basis": rows_basis, "tokens_per_example": tokens,
                                                                  "tokens_basis": token_basis})

    def fit(self, sources: Sequence[str], target: str, users: int, method: str, config: MigrationConfig | None = None) -> dict[str, Any]:
        """Fitting an adapter with ``method`` from ``sources`` to ``target`` over ``users``, then mapping them."""
        seconds_rate, rate_basis = self.throughput(target)
        for r in self.runs:
            if r.kind != "migrate":  # an apply run's "sources" are set ids, not models
                continue
            recorded = [src.get("model") if isinstance(src, dict) else None for src in r.config.get("sources", [])]
            if r.model == target and recorded == list(sources) and r.config.get("method", "puma") == method and r.config.get("candidates"):
                passes = ((r.forward_tokens or 0) + (r.backward_tokens or 0)) * users / float(r.config["candidates"])
                return _estimate(passes, seconds_rate, f"calibrated from run {r.id} (scaled by users)", rate_basis,
                                 {"users": users, "run": r.id, "method": method})
        config = config or MigrationConfig(method=method)
        tokens, token_basis = self.tokens_per_example(target)
        rows, rows_basis = self.rows_per_user()
        train_rows = users * rows * (1 - config.valid_fraction)
        valid_rows = users * rows * config.valid_fraction
        budget = config.selection.resolve_budget(users)
        epochs = getattr(config.method_config, "epochs", 1)
        steps = max(int(epochs * budget * rows * (1 - config.valid_fraction) / config.batch_size), config.min_steps)
        if config.max_fit_epochs is not None:
            steps = min(steps, int(config.max_fit_epochs * train_rows / config.batch_size) + 1)
        validations = max(1, steps // max(config.valid_every, 1))
        passes = (2 * steps * config.batch_size + validations * valid_rows + train_rows + valid_rows) * tokens
        share = config.cost_share(budget, users) if config.refine_epochs == 0 else None
        if share is not None:  # what the fit leaves of the cost budget goes to refinement: the budget is the estimate
            passes = max(passes, share * config.reference_token_passes(train_rows * tokens, valid_rows * tokens))
        return _estimate(passes, seconds_rate, "prior", rate_basis, {
            "users": users, "selected": budget, "steps": steps, "validations": validations, "rows_per_user": rows, "rows_basis": rows_basis,
            "tokens_per_example": tokens, "tokens_basis": token_basis, "method": method, "cost_budget": share})

    @staticmethod
    def reuse(users: int) -> dict[str, Any]:
        """Mapping ``users`` through a stored adapter: no backbone pass."""
        return {"token_passes": 0, "seconds": round(users * MAP_SECONDS_PER_USER, 3), "basis": "no backbone pass (apply only)",
                "details": {"users": users}}


def _estimate(passes: float, rate: float, basis: str, rate_basis: str, details: dict[str, Any]) -> dict[str, Any]:
    return {"token_passes": int(round(passes)), "seconds": round(passes / max(rate, 1e-9), 1), "basis": basis,
            "seconds_basis": rate_basis, "details": details}
