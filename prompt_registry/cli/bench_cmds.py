"""``bench paper``: the paper's claims side by side, one call into ``prompt_registry.paper``."""

from __future__ import annotations

import click

from ._common import json_option, print_json


@click.group()
def bench() -> None:
    """Benchmarks shipped with the package."""


@bench.command("paper")
@click.option("--scale", type=click.Choice(["smoke", "cpu", "gpu"]), default="smoke", show_default=True,
              help="smoke: tiny local models, minutes; cpu: real MPNet, SmolLM2-135M, MiniLM on MovieLens-100k, under 2 h on "
                   "2 cores (`assets fetch --mpnet --smollm2` first); gpu: all of MovieLens-100k, for an accelerator.")
@click.option("--seeds", type=int, help="Seeds per migration row (default: the scale's, 3).")
@click.option("--threads", type=int, help="Torch threads (default: 1 for smoke, else every core).")
@click.option("--out", type=click.Path(file_okay=False), default="benchmarks/results", show_default=True, help="Where the report goes.")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where models, data and the registry are built (default: a temp dir).")
@click.option("--resume", is_flag=True, help="Continue the run in --workdir: keep its sources and finished seeds.")
@json_option
def bench_paper(scale: str, seeds: int | None, threads: int | None, out: str, workdir: str | None, resume: bool, as_json: bool) -> None:
    """Reproduce the paper's tables (retrain vs migration, selection, chain, aggregate) with our numbers beside its."""
    from prompt_registry.paper import run_paper

    report = run_paper(scale, seeds=seeds, out=out, workdir=workdir, threads=threads, resume=resume, say=None if as_json else click.echo)
    if as_json:
        print_json({k: report[k] for k in ("scale", "seeds", "puma_vs_retrain", "claims", "registry", "plots", "seconds")})


COMMANDS = (bench,)
