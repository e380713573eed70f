#!/usr/bin/env bash
# Evaluate one model on a suite of benchmarks in a single train_net.py call, each with its own
# vocabulary and evaluator:
#   --suite six (default): the six open-vocabulary benchmarks A-847, PC-459, A-150, PC-59, PAS-20, PAS-20b;
#   --suite cliper: the columns of CLIPer's table, VOC-21, PC-60, COCO-Object, PAS-20, PC-59,
#                   COCO-Stuff-171 (val2017) and A-150.
#
#   tools/eval_benchmarks.sh [--suite six|cliper] CONFIG WEIGHTS [extra config options...]
#   e.g. tools/eval_benchmarks.sh configs/vitb.yaml output/vitb/model_final.pth OUTPUT_DIR output/vitb/eval
# WEIGHTS may be '' for a model that needs no trained weights (CLIPer): MODEL.WEIGHTS is then ''.
#
# Datasets are read from $DETECTRON2_DATASETS (default: datasets/); prepare them first, see
# datasets/README.md. Environment: PYTHON (default: python), NUM_GPUS (default: 1).
# Results: a table logged by train_net.py, OUTPUT_DIR/inference/summary.json and
# OUTPUT_DIR/inference/<dataset>/sem_seg_metrics.json.
set -euo pipefail

USAGE="usage: $0 [--suite six|cliper] CONFIG WEIGHTS [extra config options...]"
SUITE=six
if [ "${1:-}" = "--suite" ]; then
  [ "$#" -ge 2 ] || { echo "$USAGE" >&2; exit 2; }
  SUITE="$2"
  shift 2
fi
case "$SUITE" in
  six)
    BENCHMARKS="('ade20k_full_sem_seg_freq_val_all', 'context_459_test_sem_seg', 'ade20k_150_test_sem_seg', \
'context_59_test_sem_seg', 'voc_2012_test_sem_seg', 'voc_2012_test_background_sem_seg')" ;;
  cliper)
    BENCHMARKS="('voc_2012_test_21_sem_seg', 'context_60_test_sem_seg', 'coco_2017_test_object_sem_seg', \
'voc_2012_test_sem_seg', 'context_59_test_sem_seg', 'coco_2017_test_stuff_all_sem_seg', 'ade20k_150_test_sem_seg')" ;;
  *) echo "error: unknown suite '$SUITE' (choose six or cliper)" >&2; exit 2 ;;
esac
if [ "$#" -lt 2 ]; then
  echo "$USAGE" >&2
  exit 2
fi
CONFIG="$1"
WEIGHTS="$2"
shift 2
[ -f "$CONFIG" ] || { echo "error: config file not found: $CONFIG" >&2; exit 2; }
[ -z "$WEIGHTS" ] || [ -f "$WEIGHTS" ] || { echo "error: weights not found: $WEIGHTS" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Default interpreter: the repository's .venv (tools/install.sh), else python on PATH.
DEFAULT_PYTHON=python
[ -x "$REPO/.venv/bin/python" ] && DEFAULT_PYTHON="$REPO/.venv/bin/python"
exec "${PYTHON:-$DEFAULT_PYTHON}" "$REPO/train_net.py" --config-file "$CONFIG" --num-gpus "${NUM_GPUS:-1}" --eval-only \
  MODEL.WEIGHTS "$WEIGHTS" DATASETS.TEST "$BENCHMARKS" "$@"
