"""The paper's claims side by side (``prompt-registry bench paper``): one run, on the same users and
splits, laid out like the tables of Zhao & Gao, "Don't Start Over" (2026), each of our figures
beside the paper's, and each claim judged on our numbers.

Rows, per seed: baselines (global mean, per-user mean); source prompts on A evaluated on A (and on
C on C); random-init and a full retrain on the target B; the default migration A -> B with group
selection at a budget, random selection at that budget and at three times it (the paper's Table 4
question), every other registered method (``anchor-ridge``); an aggregate A + C -> B and a chain
A -> C -> B, each planned and run by the planner, with per-hop quality and the aggregate against
its single sources. Every migration row is paired-bootstrapped over users against the retrain.
Then the registry side: import, read and apply against raw store operations on the same bytes.

Scales (``scales.SCALES``): ``smoke`` (tiny local models, synthetic users; under 3 minutes on 2
cores: it checks that the report is produced and finite, not that the claims hold), ``cpu``
(MPNet, SmolLM2-135M and MiniLM on a MovieLens-100k subsample, within 120 minutes on 2 cores) and
``gpu`` (all of MovieLens-100k, the decoder as the target; for an accelerator).

Results: ``OUT/paper_<scale>.json`` (machine, versions, config, every figure;
``puma_vs_retrain.quality_ratio`` = default-method RMSE / retrain RMSE, ``cost_ratio`` = its
token-passes / the retrain's), ``paper_<scale>.md`` and PNG plots.
"""

from __future__ import annotations

from .report import markdown
from .run import run_paper
from .scales import PAPER, SCALES, Scale

__all__ = ["PAPER", "SCALES", "Scale", "markdown", "run_paper"]
