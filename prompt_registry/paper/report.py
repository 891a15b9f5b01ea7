"""The report of ``bench paper``: seed summaries, the paper's claims judged on our numbers, the
Markdown tables laid out like the paper's, and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .scales import PAPER

DEFAULT = "default migration A->B (group)"
SE_TO_RESOLVE = 2.0  # a paired difference smaller than this many standard errors is not resolved
NO_WORSE_MARGIN = 0.01  # "no worse": within 1% of the other row's RMSE, 2 SEs included
SE_TO_RANK = 10.0  # headroom (random-init -> retrain) under this many paired SEs cannot rank methods


def summary(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: mean +- sd over seeds, cost vs retrain, per-seed paired bootstrap against retrain
    and the share of retrain's gain over random-init recovered; the headroom per seed and pooled."""
    from ..training.stats import paired_bootstrap, paired_bootstrap_seeds, recovered

    rows: dict[str, Any] = {}
    for name in seeds[0]["rows"]:
        values = [s["rows"][name]["rmse"] for s in seeds]
        cost = [s["rows"][name]["token_passes"] / max(s["rows"]["retrain"]["token_passes"], 1) for s in seeds]
        entry: dict[str, Any] = {"model": seeds[0]["rows"][name]["model"], "rmse_mean": float(np.mean(values)),
                                 "rmse_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "rmse": values,
                                 "cost_vs_retrain": float(np.mean(cost)), "seconds": float(np.mean([s["rows"][name]["seconds"] for s in seeds]))}
        if entry["model"] == "B" and name != "retrain":
            boots = [paired_bootstrap(s["rows"][name]["per_user"], s["rows"]["retrain"]["per_user"], "rating", seed=s["seed"]) for s in seeds]
            entry["vs_retrain"] = [{"diff": b["diff"], "se": b["se"]} for b in boots]
            shares = [recovered(s["rows"]["random-init"]["rmse"], s["rows"][name]["rmse"], s["rows"]["retrain"]["rmse"]) for s in seeds]
            entry["recovered"] = float(np.mean([x for x in shares if x is not None])) if any(x is not None for x in shares) else None
        rows[name] = entry
    headroom = [paired_bootstrap(s["rows"]["random-init"]["per_user"], s["rows"]["retrain"]["per_user"], "rating", seed=s["seed"]) for s in seeds]
    both = paired_bootstrap_seeds([s["rows"]["random-init"]["per_user"] for s in seeds], [s["rows"]["retrain"]["per_user"] for s in seeds], "rating")
    return {"rows": rows, "headroom": [{"diff": h["diff"], "se": h["se"], "in_se": h["diff"] / h["se"] if h["se"] else None} for h in headroom],
            "headroom_pooled": {**both, "in_se": both["diff"] / both["se"] if both["se"] else None},
            "test_users": both["users"]}


def _compare(seeds: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """``a`` - ``b`` RMSE, seed-mean, users bootstrapped jointly over the seeds."""
    from ..training.stats import paired_bootstrap_seeds

    out = paired_bootstrap_seeds([s["rows"][a]["per_user"] for s in seeds], [s["rows"][b]["per_user"] for s in seeds], "rating")
    return {"a": a, "b": b, **out, "in_se": out["diff"] / out["se"] if out["se"] else None}


def _verdict(diff: float, se: float, *, want: str, margin: float = 0.0) -> str:
    """``want``: "lower" (a beats b by 2 SEs), or "not higher": a is no worse than b, which holds
    only when even ``diff + 2 SE`` stays within ``margin`` (an equivalence bound, not the mere
    absence of a significant loss, which a setting without power would always grant)."""
    resolved = se > 0 and abs(diff) >= SE_TO_RESOLVE * se
    if want == "lower":
        return "holds" if resolved and diff < 0 else ("fails" if resolved and diff > 0 else "not resolved")
    if resolved and diff > 0:
        return "fails"
    return "holds" if diff + SE_TO_RESOLVE * se <= margin else "not resolved"


def claims(seeds: list[dict[str, Any]], summary_: dict[str, Any]) -> list[dict[str, Any]]:
    """Each of the paper's claims judged on this run: our figure, the paper's, the paired test and
    a verdict (``holds``, ``fails``, ``not resolved``; see ``_verdict``). The cost and the
    across-families ratios are point estimates against the paper's figures."""
    rows = summary_["rows"]
    ratio = rows[DEFAULT]["rmse_mean"] / rows["retrain"]["rmse_mean"]
    out: list[dict[str, Any]] = []

    def claim(name: str, paper: str, a: str, b: str, want: str, ours: str | None = None) -> None:
        test = _compare(seeds, a, b)
        margin = NO_WORSE_MARGIN * rows[b]["rmse_mean"]
        out.append({"claim": name, "paper": paper, "ours": ours or f"{rows[a]['rmse_mean']:.4f} vs {rows[b]['rmse_mean']:.4f}",
                    "test": {k: test[k] for k in ("a", "b", "diff", "se", "in_se", "lo", "hi", "users", "seeds")},
                    "verdict": _verdict(test["diff"], test["se"], want=want, margin=margin if want == "not higher" else 0.0)})

    claim("the default migration is no worse than retraining", f"PUMA {PAPER['puma_all_users']} vs retrain {PAPER['retrain']}",
          DEFAULT, "retrain", "not higher", f"{rows[DEFAULT]['rmse_mean']:.4f} vs {rows['retrain']['rmse_mean']:.4f} (ratio {ratio:.3f})")
    claim("the default migration beats untrained (random-init) prompts", "implied (PUMA is far below random-init there)",
          DEFAULT, "random-init", "lower")
    out.append({"claim": "at a small share of the retrain's cost (holds at <= 5%)", "paper": f"about {PAPER['cost_share']:.0%} (0.48 h vs 24 h)",
                "ours": f"{rows[DEFAULT]['cost_vs_retrain']:.3f} of the retrain's token-passes", "test": None,
                "verdict": "holds" if rows[DEFAULT]["cost_vs_retrain"] <= 0.05 else "fails"})
    claim("group selection beats random selection at the same budget", f"{PAPER['group_2000']} vs {PAPER['random_2000']}",
          DEFAULT, "random selection, same budget", "lower")
    claim("group selection is no worse than random selection at 3x the budget", f"{PAPER['group_2000']} vs {PAPER['random_6000']}",
          DEFAULT, "random selection, 3x the budget", "not higher")
    chain_end = [n for n in rows if n.startswith("chain")][-1]
    claim("a chain A->C->B ends no worse than the direct migration A->B", f"hops {', '.join(map(str, PAPER['chain_hops']))}",
          chain_end, DEFAULT, "not higher")
    aggregate = [n for n in rows if n.startswith("aggregate")][-1]
    claim("the aggregate A+C->B beats the single source A", f"{PAPER['aggregate']} vs {PAPER['aggregate_singles'][0]}", aggregate, DEFAULT, "lower")
    claim("the aggregate A+C->B beats the single source C", f"{PAPER['aggregate']} vs {PAPER['aggregate_singles'][1]}", aggregate,
          "single source C->B", "lower")
    low, high = PAPER["retrain_over_puma"]
    for single, retrained, _source in families(rows):
        r = rows[retrained]["rmse_mean"] / rows[single]["rmse_mean"]
        out.append({"claim": f"retrain / migration RMSE across model families ({single})", "paper": f"{low}-{high}",
                    "ours": f"{r:.3f}", "test": None,
                    "verdict": "holds" if low <= r <= high else ("beyond it: the migration beats the retrain" if r > high else "fails")})
    return out


def families(rows: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(single-source migration, the training from scratch on its target, the source's role): A -> B
    and C -> B against the retrain on B, the chain's first hop A -> C against C's own trained prompts."""
    hop1 = [n for n in rows if n.startswith("chain")][0]
    return [(DEFAULT, "retrain", "A"), ("single source C->B", "retrain", "C"), (hop1, "source prompts on C", "A")]


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]["rows"]

    def cell(name: str) -> str:
        r = rows[name]
        return f"{r['rmse_mean']:.4f} +- {r['rmse_sd']:.4f}"

    def cost(name: str) -> str:
        return f"{rows[name]['cost_vs_retrain']:.3f}"

    pvr, models, config = report["puma_vs_retrain"], report["models"], report["config"]
    pooled = report["summary"]["headroom_pooled"]
    rankable = pooled["in_se"] is not None and pooled["in_se"] >= SE_TO_RANK
    per_user = f"their {config['per_user']} newest ratings" if config["per_user"] else "all their ratings"
    lines = [f"# The paper's claims at scale `{report['scale']}`", "",
             f"Command: `{report['command']}` ({report['seconds'] / 60:.1f} min on {report['machine']['cpu_count']} CPUs). "
             f"Seeds {report['seeds']}. {report['about']}.", "",
             f"- Data: {report['data']}; {config['users']} users x {per_user}; the test split is each user's newest 20% "
             f"({report['summary']['test_users']} users scored), validation is the tail of the rest; RMSE, mean +- sd over seeds.",
             f"- Models: A = {models['A']}, C = {models['C']}, B (the target) = {models['B']}.",
             f"- Budgets: retrain and random-init {config['train_epochs']} epochs (patience {config['patience']}, best validation epoch kept); "
             f"the source prompts {config['source_epochs']} epochs" + (", trained once (seed 0) and migrated by every seed" if config["shared_sources"] else "")
             + f"; selection budget {config['budget']:g} of the users.",
             f"- Headroom (random-init - retrain RMSE, users bootstrapped over the seeds): {pooled['diff']:+.4f} +- {pooled['se']:.4f} "
             f"= **{pooled['in_se']:.1f} paired SEs**" + ("" if rankable else f" (under {SE_TO_RANK:g}: this setting cannot rank methods; "
                                                                              "differences between migration rows are mostly noise)") + ".", "",
             "## The claims, judged on this run", "",
             f"A claim that one row beats another *holds* when it is ahead by at least {SE_TO_RESOLVE:g} paired standard errors (users "
             "bootstrapped jointly over the seeds), *fails* when it is behind by that much, and is *not resolved* otherwise. A claim that a "
             f"row is *no worse* holds only when it is within {NO_WORSE_MARGIN:.0%} of the other row even {SE_TO_RESOLVE:g} SEs "
             f"against it, and fails when it is {SE_TO_RESOLVE:g} SEs behind. Cost and across-families ratios are point estimates.", "",
             "| claim | paper | ours | a - b (SE) | verdict |", "|---|---|---|---|---|"]
    for c in report["claims"]:
        test = c["test"]
        shown = f"{test['diff']:+.4f} ({test['se']:.4f})" if test else "-"
        lines.append(f"| {c['claim']} | {c['paper']} | {c['ours']} | {shown} | **{c['verdict']}** |")
    lines += ["", "## Table 2: retrain vs migration", "", "| row | ours (RMSE) | cost vs retrain | recovered | paper |", "|---|---|---:|---:|---|",
              f"| retrain on B | {cell('retrain')} | 1.000 | 1.00 | {PAPER['retrain']} |"]
    for name, paper in ((DEFAULT, f"{PAPER['puma_all_users']} (all-users adapter, ~{PAPER['cost_share']:.0%} of the cost)"),
                        ("random-init", "-"), ("anchor-ridge A->B (group)", "-")):
        share = rows[name].get("recovered")
        lines.append(f"| {name} | {cell(name)} | {cost(name)} | {share:.2f} | {paper} |" if share is not None else
                     f"| {name} | {cell(name)} | {cost(name)} | - | {paper} |")
    lines += [f"| source prompts on A (on A) | {cell('source prompts on A')} | - | - | - |",
              f"| source prompts on C (on C) | {cell('source prompts on C')} | - | - | - |",
              f"| global mean / per-user mean | {report['baselines']['global_mean']:.4f} / {report['baselines']['user_mean']:.4f} | - | - | - |", "",
              f"`quality_ratio` (default / retrain RMSE) **{pvr['quality_ratio']:.3f}** (paper: retrain/PUMA {PAPER['retrain_over_puma'][0]}-"
              f"{PAPER['retrain_over_puma'][1]}); `cost_ratio` **{pvr['cost_ratio']:.3f}**.", "",
              "## Table 3: across model families (retrain / migration RMSE)", "",
              "| migration | widths | ours: migration vs trained from scratch on its target | retrain / migration | paper |", "|---|---|---|---:|---|",
              *[f"| {single} | {report['widths'][source]} -> {report['widths'][rows[single]['model']]} | "
                f"{cell(single)} vs {cell(retrained)} | {rows[retrained]['rmse_mean'] / rows[single]['rmse_mean']:.3f} | "
                f"{PAPER['retrain_over_puma'][0]}-{PAPER['retrain_over_puma'][1]} |" for single, retrained, source in families(rows)], "",
              "## Table 4: which users train the adapter", "", "| selection | ours | cost vs retrain | paper |", "|---|---|---:|---|",
              f"| group, budget {config['budget']:g} | {cell(DEFAULT)} | {cost(DEFAULT)} | {PAPER['group_2000']} (2,000 users) |",
              f"| random, same budget | {cell('random selection, same budget')} | {cost('random selection, same budget')} | {PAPER['random_2000']} |",
              f"| random, 3x the budget | {cell('random selection, 3x the budget')} | {cost('random selection, 3x the budget')} | "
              f"{PAPER['random_6000']} (6,000) |", "",
              "## Chain A -> C -> B (planned and run by the planner)", "", "| hop | ours | cost vs retrain on B | paper (per hop) |", "|---|---|---:|---|"]
    chain = [n for n in rows if n.startswith("chain")]
    for i, name in enumerate(chain):
        lines.append(f"| {name} | {cell(name)} | {cost(name)} | {PAPER['chain_hops'][i] if i < len(PAPER['chain_hops']) else '-'} |")
    lines.append(f"| direct A->B, for comparison | {cell(DEFAULT)} | {cost(DEFAULT)} | - |")
    aggregate = [n for n in rows if n.startswith("aggregate")][-1]
    lines += ["", "Hop 1 lands on C, so its cost is in C's token-passes (C's own source training is the row to compare it with).", "",
              "## Aggregate A + C -> B vs single sources", "", "| sources | ours | cost vs retrain | paper |", "|---|---|---:|---|",
              f"| A + C (aggregate) | {cell(aggregate)} | {cost(aggregate)} | {PAPER['aggregate']} |",
              f"| A alone | {cell(DEFAULT)} | {cost(DEFAULT)} | {PAPER['aggregate_singles'][0]} |",
              f"| C alone | {cell('single source C->B')} | {cost('single source C->B')} | {PAPER['aggregate_singles'][1]} |"]
    side = report["registry"]
    lines += ["", "## The registry side (same process, same disk)", "",
              f"{side['prompts']:,} prompts of width {side['width']} ({side['megabytes']:.0f} MB) on SQLite; the adapter has the default "
              f"method's architecture ({side['adapter']['kind']}" + (f", rank {side['adapter']['rank']}" if side["adapter"]["kind"] == "lowrank" else "")
              + f", {side['adapter']['source_widths'][0]} -> {side['adapter']['target_width']}):", "",
              "| figure | registry | raw store | ratio |", "|---|---:|---:|---:|",
              f"| import (validated, checksummed, catalogued, its {side['prompts']:,} users created) vs a raw store write, s | "
              f"{side['import_seconds']:.2f} | {side['raw_write_seconds']:.2f} | "
              f"{side['import_over_raw_write']:.2f}x |",
              f"| read every prompt (verified) vs a raw store read, s | {side['read_all_seconds']:.2f} | {side['raw_read_seconds']:.2f} | "
              f"{side['read_over_raw_read']:.2f}x |",
              f"| apply the default method's adapter vs a raw read + write of the same rows, s | {side['apply_seconds']:.2f} | "
              f"{side['raw_read_write_seconds']:.2f} | {side['apply_over_raw_read_write']:.2f}x |", "",
              f"Apply throughput {side['apply_prompts_per_second']:,} prompts/s; one `get_prompt` p50 {side['get_prompt_p50_ms']:.2f} ms, "
              f"p99 {side['get_prompt_p99_ms']:.2f} ms. The store benchmark with baselines (a file per user, Postgres) is "
              "[bench_store](bench_store.md).", "",
              "## Every migration row against the retrain", "", "Paired bootstrap over users per seed (diff, SE):", ""]
    for name, r in rows.items():
        if "vs_retrain" in r:
            lines.append(f"- {name}: " + "; ".join(f"{b['diff']:+.4f} ({b['se']:.4f})" for b in r["vs_retrain"]))
    lines += ["", "Seconds per row (mean over seeds): " + ", ".join(f"{n} {r['seconds']:.0f}" for n, r in rows.items()) + "."]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out: Path, scale: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["summary"]["rows"]
    on_b = {n: r for n, r in rows.items() if r["model"] == "B"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in on_b.items():
        ax.errorbar(r["cost_vs_retrain"], r["rmse_mean"], yerr=r["rmse_sd"], fmt="o", capsize=3, label=name)
    ax.set_xlabel("token-passes / retrain's")
    ax.set_ylabel("test RMSE on B")
    ax.set_title(f"quality vs cost on B ({scale})")
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths = [out / f"paper_{scale}_quality_cost.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    chain = [n for n in rows if n.startswith("chain")]
    aggregate = [n for n in rows if n.startswith("aggregate")][-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.errorbar(range(1, len(chain) + 1), [rows[n]["rmse_mean"] for n in chain], yerr=[rows[n]["rmse_sd"] for n in chain], fmt="o-", capsize=3)
    left.axhline(rows[DEFAULT]["rmse_mean"], ls="--", lw=1, color="gray", label="direct A->B")
    left.set_xticks(range(1, len(chain) + 1), [f"hop {i + 1}: {rows[n]['model']}" for i, n in enumerate(chain)])
    left.set_title("chain: RMSE per hop")
    left.legend(fontsize=7)
    names = [aggregate, DEFAULT, "single source C->B"]
    right.bar(["A+C", "A", "C"], [rows[n]["rmse_mean"] for n in names], yerr=[rows[n]["rmse_sd"] for n in names], capsize=3)
    low = min(rows[n]["rmse_mean"] - rows[n]["rmse_sd"] for n in names)
    right.set_ylim(low - 0.05 * abs(low), None)
    right.set_title("aggregate vs single sources (on B)")
    fig.tight_layout()
    paths.append(out / f"paper_{scale}_chain_aggregate.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return [str(p) for p in paths]
