#!/usr/bin/env bash
# Builds the peer's own venv for bench/train_throughput.py: open_clip_train 3.3 as released, next to the same
# torch as ours. It needs its own venv because open_clip_train 3.3 groups webdataset samples by `fname` and
# crashes on the end-of-shard marker of webdataset >= 0.2.96 (docs/pitfalls.md), while our trainer
# uses webdataset 1.x. Idempotent: a stamp file skips the work when the venv is complete.
#   usage: bench/peer_venv.sh [VENV_DIR]   (default bench_out/peer-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-bench_out/peer-venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.peer-installed"
if [[ -f "$STAMP" ]]; then
  echo "peer venv ready: $VENV"
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
# same torch as the project venv (from this machine's disk, docs/pitfalls.md)
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
# open_clip_torch 3.3.0 ships the open_clip_train package; the rest is what open_clip_train.main imports
"${PIP[@]}" open_clip_torch==3.3.0 'webdataset<=0.2.86' pandas braceexpand fsspec
touch "$STAMP"
echo "peer venv ready: $VENV"
