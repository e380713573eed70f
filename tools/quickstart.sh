#!/usr/bin/env bash
# One command from a fresh clone: install, train the tiny ESC-Net on the built-in synthetic
# dataset, evaluate it, and segment one picture with a vocabulary.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-output/quickstart}"
PY=.venv/bin/python

bash tools/install.sh
echo "== training the tiny model on the synthetic dataset (output: $OUT/train)"
$PY train_net.py --config-file configs/tiny.yaml OUTPUT_DIR "$OUT/train"
echo "== evaluating the trained weights"
$PY train_net.py --config-file configs/tiny.yaml --eval-only \
  MODEL.WEIGHTS "$OUT/train/model_final.pth" OUTPUT_DIR "$OUT/eval"
IMAGE="${DETECTRON2_DATASETS:-datasets}/synthetic_shapes/images/val/val_00000.png"
echo "== segmenting $IMAGE"
$PY demo/demo.py --config-file configs/tiny.yaml --input "$IMAGE" \
  --vocab "grass,water,sand,red ball,blue box,yellow kite" --output "$OUT/demo" \
  --opts MODEL.WEIGHTS "$OUT/train/model_final.pth"
$PY - "$OUT" <<'PYEOF'
import glob, json, os, sys
out = sys.argv[1]
summary = json.load(open(os.path.join(out, "eval", "inference", "summary.json")))
for name, metrics in summary.items():
    print(f"mIoU on {name}: {metrics['mIoU']:.1f} (pACC {metrics['pACC']:.1f})")
for path in sorted(glob.glob(os.path.join(out, "demo", "*"))):
    print("demo output:", os.path.abspath(path))
PYEOF
