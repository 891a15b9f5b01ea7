"""``run_paper``: build the scale's models and data, run every seed, write the report."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._util import machine_info
from ..registry import Registry
from . import report as reporting
from .rows import registry_side, seed_rows, train_sources
from .scales import BACKBONES, PAPER, SCALES, Scale, build_data

TASK = "rating"
THREADS = {"smoke": 1}  # tiny models train faster on one thread than on two contended ones (see demo.choose_threads)


def run_paper(scale: str | Scale = "smoke", *, seeds: int | None = None, out: str | os.PathLike[str] = "benchmarks/results",
              workdir: str | os.PathLike[str] | None = None, threads: int | None = None, resume: bool = False,
              say: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run every row at ``scale`` (a name in ``SCALES``, or a ``Scale`` for a custom run) over
    ``seeds`` seeds (default: the scale's) with ``threads`` torch threads (default: 1 for smoke,
    else every core) and write ``paper_<name>.{json,md}`` and PNGs to ``out``. ``workdir`` keeps
    models, data, the registries and each finished seed (default: a temporary directory, removed
    afterwards); ``resume`` continues a run in ``workdir`` made with the same scale: the sources
    and the finished seeds are kept, the rest is run. The real backbones come from ``assets``
    (PyPI packages, cached)."""
    import torch

    from .. import validation
    from ..errors import InvalidArgumentError

    if isinstance(scale, Scale):
        spec = scale
    elif scale in SCALES:
        spec = SCALES[scale]
    else:
        raise InvalidArgumentError(f"unknown scale {scale!r}: choose one of {', '.join(SCALES)}")
    n_seeds = validation.whole(seeds, "seeds", 1, 20) or spec.seeds
    n_threads = validation.whole(threads, "threads", 1, 256) or THREADS.get(spec.name, os.cpu_count() or 1)
    if resume and workdir is None:
        raise InvalidArgumentError("resume continues a run in its workdir: pass workdir too")
    emit = say or (lambda _msg: None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = workdir is None
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prompt-registry-paper-"))
    root.mkdir(parents=True, exist_ok=True)
    progress_file = root / "progress.json"
    config = json.loads(json.dumps(dataclasses.asdict(spec)))
    progress: dict[str, Any] = {"config": config, "shared": None, "seeds": {}}
    if resume and progress_file.exists():
        kept = json.loads(progress_file.read_text())
        if kept.get("config") != config:
            raise InvalidArgumentError(f"{root} holds a run of another configuration: resume it with that scale, or use a new workdir")
        progress = kept
        emit(f"resuming: seeds {sorted(int(k) for k in progress['seeds'])} done" + (", sources trained" if progress["shared"] else ""))
    else:
        for stale in root.glob("registry*"):
            shutil.rmtree(stale, ignore_errors=True)
        progress_file.unlink(missing_ok=True)

    prior_seconds = float(progress.get("seconds", 0.0))

    def save() -> None:
        progress["seconds"] = prior_seconds + time.perf_counter() - started
        partial = progress_file.with_suffix(".partial")
        partial.write_text(json.dumps(progress, default=float))
        partial.replace(progress_file)

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    started = time.perf_counter()
    try:
        models = {role: BACKBONES[key][1](root / "models") for role, key in spec.models.items()}
        widths: dict[str, int] = {}
        base = root / "registry-base"
        if not (base / "registry.db").exists() or (spec.shared_sources and progress["shared"] is None):
            shutil.rmtree(base, ignore_errors=True)
            with Registry.init(base, actor="paper") as reg:
                for role, path in models.items():
                    widths[role] = reg.register_model(role, path).hidden_size
                reg.add_task(TASK, "rating")
                if spec.shared_sources:
                    emit(f"source prompts on A and C, trained once ({spec.source_epochs} epochs)")
                    progress["shared"] = train_sources(reg, build_data(spec, root, 0), TASK, spec, 0, emit)
                    save()
        per_seed = []
        for seed in range(n_seeds):
            if str(seed) in progress["seeds"]:
                per_seed.append(progress["seeds"][str(seed)])
                continue
            copy = root / f"registry-seed{seed}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(base, copy)  # every seed starts from the same registry: no adapter of another seed to reuse
            data = build_data(spec, root, seed)
            with Registry.open(copy, actor="paper") as reg:
                sources = progress["shared"] or train_sources(reg, data, TASK, spec, seed, emit)
                per_seed.append(seed_rows(reg, data, TASK, spec, seed, sources, emit))
            progress["seeds"][str(seed)] = per_seed[-1]
            save()  # the seed's registry stays in the workdir: its runs, adapters and sets are there to inspect
        emit(f"registry side: {spec.apply_prompts:,} prompts")
        side_root = root / "registry-side"  # a registry of its own: a resumed run measures it afresh
        shutil.rmtree(side_root, ignore_errors=True)
        with Registry.init(side_root, actor="paper") as reg:
            for role, path in models.items():
                widths[role] = reg.register_model(role, path).hidden_size
            side = registry_side(reg, spec)
        shutil.rmtree(side_root, ignore_errors=True)
        summary = reporting.summary(per_seed)
        default, retrain = summary["rows"][reporting.DEFAULT], summary["rows"]["retrain"]
        result: dict[str, Any] = {
            "scale": spec.name, "about": spec.about, "seeds": list(range(n_seeds)),
            "command": f"prompt-registry bench paper --scale {spec.name} --seeds {n_seeds} --threads {n_threads}",
            "machine": {**machine_info(), "load_after": list(os.getloadavg())}, "config": dataclasses.asdict(spec),
            "models": {role: BACKBONES[key][0] for role, key in spec.models.items()}, "widths": widths,
            "data": "synthetic users (prompt_registry.data.make_synthetic), new users per seed" if spec.data == "synthetic"
                    else "MovieLens-100k (GroupLens, via the recbole wheel), one subsample (seed 0) for every seed",
            "baselines": {k: float(np.mean([s["baselines"][k] for s in per_seed])) for k in per_seed[0]["baselines"]},
            "puma_vs_retrain": {"quality_ratio": default["rmse_mean"] / retrain["rmse_mean"], "cost_ratio": default["cost_vs_retrain"]},
            "summary": summary, "claims": reporting.claims(per_seed, summary), "registry": side, "paper": PAPER,
            "per_seed": [_published(s) for s in per_seed],
            "seconds": round(prior_seconds + time.perf_counter() - started, 1), "resumed": prior_seconds > 0,
        }
        result["plots"] = reporting.plots(result, out_dir, spec.name)
        (out_dir / f"paper_{spec.name}.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
        (out_dir / f"paper_{spec.name}.md").write_text(reporting.markdown(result))
        emit(f"wrote {out_dir / f'paper_{spec.name}.md'} ({result['seconds'] / 60:.1f} min)")
        return result
    finally:
        torch.set_num_threads(previous)
        if temporary:
            shutil.rmtree(root, ignore_errors=True)


def _published(seed: dict[str, Any]) -> dict[str, Any]:
    """A seed as the JSON report keeps it: every figure but the per-user metrics (those stay in the workdir)."""
    kept = ("model", "rmse", "token_passes", "seconds", "steps", "cost_parts")
    return {k: v for k, v in seed.items() if k != "rows"} | {"rows": {n: {k: r.get(k) for k in kept} for n, r in seed["rows"].items()}}
