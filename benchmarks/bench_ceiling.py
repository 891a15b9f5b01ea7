"""How much per-user signal does MovieLens-100k hold at the sizes a CPU run can afford? The
ceiling of target (b) (issue 13), measured without any backbone.

Target (b) asks the default migration MiniLM-L6 -> MPNet-base to beat random-init (prompts frozen
at init: the head reads only the item text) by 2 paired standard errors; the power rule asks a
setting that ranks methods for ~10. What a per-user prompt can add over an item-only model is
bounded by what any per-user model adds. This fits, on the same subsample and split as
``bench_quality.py --setting movielens`` (each user's last ``per_user`` ratings, chronological
split, test 0.2, validation = the newest 0.1 of the training rows):

- **item bias**: ``mu + b_item`` (ridge, lambda chosen on the validation rows), what a head on the
  item text can at best learn without knowing the user;
- **user + item bias**: ``mu + b_user + b_item`` (alternating ridge, lambdas on validation);
- **biased MF**: user + item bias + a rank-``k`` user-by-item term (ALS, k and lambda on
  validation): per-user taste, not only a per-user offset.

and reports each per-user model against item bias on the test rows: the RMSE difference and its
paired user-bootstrap SE (``training.stats.paired_bootstrap``, as every quality bench). No backbone,
no torch: seconds.

    python benchmarks/bench_ceiling.py

Results: ``benchmarks/results/bench_ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import machine_info, write_results  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LAMBDAS = (1.0, 3.0, 10.0, 30.0)
RANKS = (2, 8)
# (users, ratings per user or None for all, seed): the bench's 300 x 40 on three seeds, then the
# biggest subsamples MovieLens-100k has (645 users have >= 40 ratings; 943 users in all)
SETTINGS = ((300, 40, 0), (300, 40, 1), (300, 40, 2), (645, 40, 0), (300, 100, 0), (943, None, 0))


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    uniq, inv = np.unique(values, return_inverse=True)
    return inv, len(uniq)


def fit(u: np.ndarray, i: np.ndarray, y: np.ndarray, n_u: int, n_i: int, *, users: bool, rank: int, lam_b: float, lam_f: float,
        iters: int = 20, seed: int = 0) -> dict[str, Any]:
    """Alternating ridge for ``mu + b_u + b_i + p_u . q_i`` (``users`` False: ``mu + b_i``)."""
    mu = float(y.mean())
    bu, bi = np.zeros(n_u), np.zeros(n_i)
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.1, (n_u, rank)), rng.normal(0, 0.1, (n_i, rank))
    by_user = [np.flatnonzero(u == k) for k in range(n_u)] if rank else []
    by_item = [np.flatnonzero(i == k) for k in range(n_i)] if rank else []
    for _ in range(iters if (users or rank) else 1):
        inter = (p[u] * q[i]).sum(1) if rank else 0.0
        bi = np.bincount(i, y - mu - bu[u] - inter, n_i) / (np.bincount(i, minlength=n_i) + lam_b)
        if users:
            bu = np.bincount(u, y - mu - bi[i] - inter, n_u) / (np.bincount(u, minlength=n_u) + lam_b)
        if rank:
            r = y - mu - bu[u] - bi[i]
            eye = lam_f * np.eye(rank)
            for k, rows in enumerate(by_user):
                if len(rows):
                    qk = q[i[rows]]
                    p[k] = np.linalg.solve(qk.T @ qk + eye, qk.T @ r[rows])
            for k, rows in enumerate(by_item):
                if len(rows):
                    pk = p[u[rows]]
                    q[k] = np.linalg.solve(pk.T @ pk + eye, pk.T @ r[rows])
    return {"mu": mu, "bu": bu, "bi": bi, "p": p, "q": q, "rank": rank}


def predict(m: dict[str, Any], u: np.ndarray, i: np.ndarray, known_i: np.ndarray) -> np.ndarray:
    out = m["mu"] + m["bu"][u] + np.where(known_i, m["bi"][i], 0.0)
    if m["rank"]:
        out = out + np.where(known_i, (m["p"][u] * m["q"][i]).sum(1), 0.0)
    return np.clip(out, 1.0, 5.0)


def per_user(users: np.ndarray, err2: np.ndarray) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for user in np.unique(users).tolist():
        mine = err2[users == user]
        out[str(user)] = {"rmse": float(np.sqrt(mine.mean())), "n": float(len(mine))}
    return out


def run_setting(data_root: Path, work: Path, n_users: int, per_user_n: int | None, seed: int) -> dict[str, Any]:
    from prompt_registry.data.dataset import Dataset, subsample
    from prompt_registry.training.stats import paired_bootstrap, pooled

    data = Dataset.load(subsample(data_root, work / f"ml-{n_users}-{per_user_n}-{seed}", n_users=n_users, per_user=per_user_n,
                                  min_interactions=per_user_n or 1, seed=seed))
    split = data.split(test_fraction=0.2, valid_fraction=0.1)
    u_all, n_u = _codes(data.users)
    items = np.asarray(data.items).astype(str)
    tr, va, te = (np.asarray(p) for p in (split.train, split.valid, split.test))
    i_tr, n_i = _codes(items[tr])
    lookup = {name: k for k, name in enumerate(np.unique(items[tr]).tolist())}

    def item_codes(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes = np.array([lookup.get(x, -1) for x in items[rows].tolist()])
        return np.maximum(codes, 0), codes >= 0

    y = np.asarray(data.labels, dtype=float)
    i_va, known_va = item_codes(va)
    i_te, known_te = item_codes(te)
    models: dict[str, dict[str, Any]] = {}
    for name, users, ranks in (("item bias", False, (0,)), ("user + item bias", True, (0,)), ("biased MF", True, RANKS)):
        best: tuple[float, dict[str, Any], dict[str, Any]] | None = None
        for rank in ranks:
            for lam_b in LAMBDAS:
                for lam_f in (LAMBDAS if rank else (0.0,)):
                    m = fit(u_all[tr], i_tr, y[tr], n_u, n_i, users=users, rank=rank, lam_b=lam_b, lam_f=lam_f, seed=seed)
                    valid = float(np.sqrt(((predict(m, u_all[va], i_va, known_va) - y[va]) ** 2).mean()))
                    if best is None or valid < best[0]:
                        best = (valid, m, {"rank": rank, "lambda_bias": lam_b, "lambda_factors": lam_f})
        assert best is not None
        valid, m, chosen = best
        err2 = (predict(m, u_all[te], i_te, known_te) - y[te]) ** 2
        models[name] = {"valid_rmse": valid, "chosen": chosen, "per_user": per_user(np.asarray(data.users)[te], err2)}
    users_sorted = sorted(models["item bias"]["per_user"])
    base = models["item bias"]["per_user"]
    out: dict[str, Any] = {"users": n_users, "per_user": per_user_n, "seed": seed, "test_ratings": len(te), "models": {}}
    for name, m in models.items():
        row: dict[str, Any] = {"test_rmse": pooled(m["per_user"], users_sorted, "rating"), "valid_rmse": m["valid_rmse"], "chosen": m["chosen"]}
        if name != "item bias":
            boot = paired_bootstrap(base, m["per_user"], "rating")
            row.update({"gain": boot["diff"], "se": boot["se"], "gain_se": boot["diff"] / boot["se"] if boot["se"] else None})
        out["models"][name] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="bench_ceiling")
    args = p.parse_args(argv)
    from prompt_registry.assets import movielens_100k

    work = Path(tempfile.mkdtemp(prefix="bench-ceiling-"))
    try:
        rows = []
        for n_users, per_user_n, seed in SETTINGS:
            rows.append(run_setting(movielens_100k(), work, n_users, per_user_n, seed))
            r = rows[-1]
            print(f"{n_users} x {per_user_n or 'all'} seed {seed}: " + ", ".join(
                f"{k} {v['test_rmse']:.4f}" + (f" ({v['gain_se']:.1f} SE)" if "gain_se" in v else "") for k, v in r["models"].items()), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"what": "per-user signal of MovieLens-100k: per-user models against an item-only model, paired user bootstrap",
              "command": shlex.join(["python", "benchmarks/bench_ceiling.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine_info(), "settings": rows}
    lines = ["# The per-user signal of MovieLens-100k (the ceiling of target (b))", "",
             " ".join(__doc__.split("\n\n")[1].split()), "",
             f"Command: `{report['command']}`. Lambdas {list(LAMBDAS)}, MF ranks {list(RANKS)}, chosen on the validation rows.", "",
             "| users x ratings, seed | test ratings | item bias | user + item bias (gain, paired SE, gain / SE) | biased MF (gain, SE, gain / SE) |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        m = r["models"]

        def cell(name: str) -> str:
            v = m[name]
            return f"{v['test_rmse']:.4f} ({v['gain']:+.4f}, {v['se']:.4f}, **{v['gain_se']:.1f}**)"

        lines.append(f"| {r['users']} x {r['per_user'] or 'all'}, {r['seed']} | {r['test_ratings']:,} | {m['item bias']['test_rmse']:.4f} | "
                     f"{cell('user + item bias')} | {cell('biased MF')} |")
    write_results(args.out, args.name, report, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
