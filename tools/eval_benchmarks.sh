#!/usr/bin/env bash
# Evaluate one model on the six open-vocabulary benchmarks in a single train_net.py call:
# A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b (each with its own vocabulary and evaluator).
#
#   tools/eval_benchmarks.sh CONFIG WEIGHTS [extra config options...]
#   e.g. tools/eval_benchmarks.sh configs/vitb.yaml output/vitb/model_final.pth OUTPUT_DIR output/vitb/eval
#
# Datasets are read from $DETECTRON2_DATASETS (default: datasets/); prepare them first, see
# datasets/README.md. Environment: PYTHON (default: python), NUM_GPUS (default: 1).
# Results: a table logged by train_net.py, OUTPUT_DIR/inference/summary.json and
# OUTPUT_DIR/inference/<dataset>/sem_seg_metrics.json.
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 CONFIG WEIGHTS [extra config options...]" >&2
  exit 2
fi
CONFIG="$1"
WEIGHTS="$2"
shift 2
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
[ -f "$WEIGHTS" ] || { echo "error: weights not found: $WEIGHTS" >&2; exit 2; }

BENCHMARKS="('ade20k_full_sem_seg_freq_val_all', 'context_459_test_sem_seg', 'ade20k_150_test_sem_seg', \
'context_59_test_sem_seg', 'voc_2012_test_sem_seg', 'voc_2012_test_background_sem_seg')"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Default interpreter: the repository's .venv (tools/install.sh), else python on PATH.
DEFAULT_PYTHON=python
[ -x "$REPO/.venv/bin/python" ] && DEFAULT_PYTHON="$REPO/.venv/bin/python"
exec "${PYTHON:-$DEFAULT_PYTHON}" "$REPO/train_net.py" --config-file "$CONFIG" --num-gpus "${NUM_GPUS:-1}" --eval-only \
  MODEL.WEIGHTS "$WEIGHTS" DATASETS.TEST "$BENCHMARKS" "$@"
