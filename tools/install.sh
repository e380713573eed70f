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

# Keep an importable detectron2 unless it is the copy of the CPython-3.10 wheel that earlier
# versions of this script made (pip check reports that one as "not supported on this platform").
d2_keep() {
  "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, os, sys
import detectron2
try:
    dist = md.distribution("sal-detectron2")
except md.PackageNotFoundError:
    sys.exit(0)  # someone else's detectron2, e.g. a source build
ours = os.path.realpath(dist.locate_file("detectron2/__init__.py")) == os.path.realpath(detectron2.__file__)
sys.exit(1 if ours and "Tag: py3-none-any" not in (dist.read_text("WHEEL") or "") else 0)
PYEOF
}
if d2_keep; then
  log "keeping installed detectron2 at $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
  log "installing detectron2 (Python code) from $D2_SPEC"
  TMP="$(mktemp -d)"
  trap 'rm -rf "$TMP"' EXIT
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.10 -d "$TMP" "$D2_SPEC"
  # The only wheel is tagged CPython 3.10 for its compiled _C, which no other interpreter loads:
  # install its Python code as a pure wheel, with its declared dependencies (numpy<2 among them).
  D2_WHEEL="$("$PY" "$ROOT/tools/pure_python_wheel.py" "$TMP"/sal_detectron2-*.whl "$TMP/pure" --package detectron2)"
  "$PY" -m pip install -q --no-deps --force-reinstall "$D2_WHEEL"
  "$PY" -m pip install -q "$D2_WHEEL" fvcore iopath  # detectron2 imports these without declaring them
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
