#!/usr/bin/env bash
# The dependency floor, checked from scratch: a virtual environment with the oldest torch, torchvision and numpy
# that pyproject.toml allows (what ModelArts' images ship), cvlab installed beside them as
# scripts/modelarts_setup.sh installs it (the installed torch, torchvision and numpy < 2 kept as constraints),
# a check that the install changed none of them, then the test suite from this checkout.
#
#   bash scripts/floor_check.sh [VENV] [-- PYTEST ARGS]     # default VENV: ~/.cache/cvlab-floor
#   TORCH=2.1.2 TORCHVISION=0.16.2 NUMPY=1.26.4 (the defaults) pick the pair; PYTHON=python3 the interpreter.
#
# PyPI's torch 2.1.2 for Linux is a CUDA 12.1 build (about 4.5 GB with its CUDA libraries); it runs on a CPU.
# Releases built against NumPy 1.x (torch < 2.3) need numpy < 2, which the constraints keep (pandas 3 would
# otherwise pull NumPy 2 in).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/cvlab-floor"
if [ $# -gt 0 ] && [ "$1" != "--" ]; then VENV="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
TORCH="${TORCH:-2.1.2}" TORCHVISION="${TORCHVISION:-0.16.2}" NUMPY="${NUMPY:-1.26.4}"
PYTHON="${PYTHON:-python3}"
say() { printf 'floor_check: %s\n' "$*"; }

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
say "torch $TORCH, torchvision $TORCHVISION, numpy $NUMPY into $VENV"
"${PIP[@]}" install --quiet "torch==$TORCH" "torchvision==$TORCHVISION" "numpy==$NUMPY"
pinned() { "${PIP[@]}" freeze | grep -iE '^(torch|torchvision|numpy)==' | sort; }
BEFORE="$(pinned)"
printf 'torch==%s\ntorchvision==%s\nnumpy<2\n' "$TORCH" "$TORCHVISION" > "$VENV/floor-constraints.txt"
"${PIP[@]}" install --quiet -e "$REPO[dev,report]" -c "$VENV/floor-constraints.txt"
AFTER="$(pinned)"
if [ "$BEFORE" != "$AFTER" ]; then
    say "the install changed the floor packages: before $(echo $BEFORE), after $(echo $AFTER)" >&2
    exit 1
fi
say "unchanged by the install: $(echo $AFTER); commit $(git -C "$REPO" rev-parse --short HEAD)"
cd "$REPO"
exec "$VENV/bin/python" -m pytest "$@"
