#!/usr/bin/env bash
# Install escnet and everything it needs into a virtual environment (default: .venv/ in the repo).
#   bash tools/install.sh            # create/update .venv
#   VENV=/path/to/env bash tools/install.sh
# An already-importable detectron2 (e.g. your own source build) is kept untouched; otherwise
# upstream detectron2's Python code is installed from the PyPI package sal-detectron2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
D2_SPEC="sal-detectron2==0.7.2"
# detectron2's declared runtime dependencies (the wheel is installed with --no-deps), plus fvcore/iopath.
D2_DEPS=("Pillow>=7.1" matplotlib "pycocotools>=2.0.2" "termcolor>=1.1" "yacs>=0.1.8" tabulate cloudpickle
         "tqdm>4.29.0" tensorboard "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black packaging fvcore iopath)

log() { echo "[install] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

if "$PY" -c "import torch, torchvision" 2>/dev/null; then
  log "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
else
  log "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  "$PY" -m pip install $TORCH_SPEC
fi

if "$PY" -c "import detectron2" 2>/dev/null; then
  log "keeping installed detectron2 at $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  log "installing detectron2 (Python code) from $D2_SPEC"
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 --target "$TMP" "$D2_SPEC"
  # the wheel's compiled _C is built for CPython 3.10; it is copied along and simply fails to load elsewhere.
  cp -r "$TMP/detectron2" "$TMP"/sal_detectron2-*.dist-info "$SITE/"
  "$PY" -m pip install -q "${D2_DEPS[@]}"
fi

# Headless Chromium (Debian package) for the browser test of demo/app.py; Playwright drives it
# through executable_path (Playwright's own browser download is not used).
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  log "chromium present: $(command -v chromium || command -v chromium-browser)"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  log "installing chromium (apt-get)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  log "warning: chromium missing and apt-get unavailable (not root): the browser test will fail; install Debian's chromium"
fi

log "installing escnet (editable) with test extras"
"$PY" -m pip install -q -e "$ROOT[test]"
"$PY" -c "import escnet; print('[install] escnet', escnet.__version__, 'ready')"
