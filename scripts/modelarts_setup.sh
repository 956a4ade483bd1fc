#!/usr/bin/env bash
# Install cvlab beside the torch an image already has (ModelArts' notebook images, a lab server), without
# replacing torch, torchvision or torch_npu, into a virtual environment that survives a restart.
#
#   bash scripts/modelarts_setup.sh [VENV]      # default VENV: /home/ma-user/work/cvlab-venv, else ~/work/cvlab-venv
#
# What it does, each step skipped when already done (so a rerun after a restart takes seconds):
#   1. checks the image's Python (>= 3.9) and torch (>= 2.1, the floors in pyproject.toml);
#   2. makes VENV with --system-site-packages: the image's torch (and torch_npu) are seen, not copied;
#   3. pins what the image has (torch, torchvision, torch_npu, numpy < 2 where it is 1.x) in VENV/keep-torch.txt
#      and installs cvlab with its report tools under those pins (torchvision is added, matched to torch, when
#      the image has none);
#   4. checks that torch, torchvision and torch_npu are the image's, unchanged;
#   5. registers the Jupyter kernel "cvlab" (the kernel list lives in ~/.local, which a restart empties).
# Needs no root. PYTHON=... picks the image's interpreter (default: python3 on PATH).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ -d /home/ma-user/work ] && [ -w /home/ma-user/work ]; then DEFAULT_VENV=/home/ma-user/work/cvlab-venv
else DEFAULT_VENV="$HOME/work/cvlab-venv"; fi
VENV="${1:-$DEFAULT_VENV}"
say() { printf 'modelarts_setup: %s\n' "$*"; }
fail() { printf 'modelarts_setup: %s\n' "$*" >&2; exit 2; }

# 1. the image's interpreter and torch
command -v "$PYTHON" >/dev/null || fail "no $PYTHON on PATH; run with PYTHON=/path/to/the/image/python"
"$PYTHON" - <<'EOF' || exit 2
import sys
if sys.version_info < (3, 9):
    sys.exit(f"modelarts_setup: Python {sys.version.split()[0]} is older than 3.9, cvlab's floor; pick an image "
             "with Python 3.9 or newer (docs/modelarts.md)")
try:
    import torch
except Exception as exc:  # noqa: BLE001
    sys.exit(f"modelarts_setup: this Python has no working torch ({exc}); pick an image with PyTorch "
             "(docs/modelarts.md), or install torch first")
major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
if (major, minor) < (2, 1):
    sys.exit(f"modelarts_setup: torch {torch.__version__} is older than 2.1, cvlab's floor; pick a newer image")
EOF

# 2. the persistent environment
if [ ! -x "$VENV/bin/python" ]; then
    say "making $VENV (--system-site-packages: the image's torch stays where it is)"
    "$PYTHON" -m venv --system-site-packages "$VENV" || fail "could not make $VENV (is the folder writable?)"
fi
PY="$VENV/bin/python"

# 3. pins: what the image has, exactly
versions() {  # name==version for torch, torchvision, torch_npu as this interpreter sees them
    "$1" - <<'EOF'
from importlib import metadata
for name in ("torch", "torchvision", "torch_npu"):
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        pass
EOF
}
BEFORE="$(versions "$PYTHON")"
{
    echo "$BEFORE"
    if ! grep -q '^torchvision==' <<<"$BEFORE"; then
        # torchvision 0.(minor+15) is built for torch 2.(minor): 2.1 -> 0.16, 2.5 -> 0.20
        torch_minor="$(sed -n 's/^torch==2\.\([0-9]*\).*/\1/p' <<<"$BEFORE")"
        echo "torchvision==0.$((torch_minor + 15)).*"
    fi
    "$PYTHON" -c "import numpy; print('numpy<2' if int(numpy.__version__.split('.')[0]) < 2 else '')" 2>/dev/null || true
} | sed '/^$/d' > "$VENV/keep-torch.txt.new"
if cmp -s "$VENV/keep-torch.txt.new" "$VENV/keep-torch.txt" && "$PY" -c "import cvlab, papermill, ipykernel" 2>/dev/null \
        && [ "$("$PY" -c 'import cvlab, os; print(os.path.dirname(os.path.dirname(cvlab.__file__)))')" = "$REPO" ]; then
    rm "$VENV/keep-torch.txt.new"
    say "cvlab is already installed in $VENV (nothing to install)"
else
    mv "$VENV/keep-torch.txt.new" "$VENV/keep-torch.txt"
    say "installing cvlab with its report tools; pinned: $(tr '\n' ' ' < "$VENV/keep-torch.txt")"
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$REPO[report]" -c "$VENV/keep-torch.txt" \
        || fail "pip could not install cvlab without changing the pinned packages above (see pip's message)"
fi

# 4. the image's torch is untouched: same versions, and imported from the image, not from a copy in VENV
AFTER="$(versions "$PY")"
for pinned in $BEFORE; do
    grep -qxF "$pinned" <<<"$AFTER" || fail "the install changed $pinned (now: $(tr '\n' ' ' <<<"$AFTER")); report this"
done
if grep -q '^torch==' <<<"$BEFORE"; then
    TORCH_AT="$("$PY" -c 'import os, torch; print(os.path.realpath(torch.__file__))')"
    case "$TORCH_AT" in
        "$(cd "$VENV" && pwd -P)"/*) fail "pip put a second torch into $VENV ($TORCH_AT): the venv does not see the image's torch (is $PYTHON the image's own interpreter, not another venv?)" ;;
    esac
fi

# 5. the kernel for JupyterLab and `cvlab report`
"$PY" -m ipykernel install --user --name cvlab --display-name "Python (cvlab)" >/dev/null \
    || fail "could not register the Jupyter kernel 'cvlab'"
say "ready: $(tr '\n' ' ' <<<"$AFTER")in $VENV"
say "use it: source $VENV/bin/activate && python -m cvlab doctor; in JupyterLab pick the kernel 'Python (cvlab)'"
say "after a restart run this script again: it only registers the kernel again (the environment is kept)"
