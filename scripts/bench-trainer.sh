#!/usr/bin/env bash
# nasop-trainer against PyTorch eager (same torch 2.11.0, network, batch size, threads and
# steps): prints images/s of both and the ratio. Usage: scripts/bench-trainer.sh [cpu|cuda]
# The PyTorch side needs a Python torch: on a GPU machine the installed one; here a venv
# with torch 2.11.0 from PyPI (with its CUDA dependencies, ~2.6 GB, cached in ~/.cache/nasop).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cpu}
threads=${THREADS:-$(nproc)}
arch=${ARCH:-'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'}
steps=${STEPS:-30}
batch=${BATCH:-64}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if python3 -c 'import torch' 2>/dev/null; then
    python=python3
  else
    venv=${NASOP_CACHE:-$HOME/.cache/nasop}/torch-venv
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
      echo "installing torch 2.11.0 into $venv for the PyTorch baseline" >&2
      python3 -m venv "$venv"
      "$venv/bin/pip" install -q torch==2.11.0
    fi
    python=$venv/bin/python
  fi
fi
trainer=${TRAINER:-target/release/nasop-trainer}
[ -x "$trainer" ] || { echo "build the trainer first: make build" >&2; exit 1; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
rust=(); torch=()
for round in 1 2 3; do   # interleaved, so drift in the machine hits both alike
  rust+=("$("$trainer" bench --arch "$arch" --steps "$steps" --batch-size "$batch" --threads "$threads" --device "$device" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
  torch+=("$("$python" trainer/bench/pytorch_nb201.py "$arch" --steps "$steps" --batch-size "$batch" --threads "$threads" --device "$device" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
done
r=$(printf '%s\n' "${rust[@]}" | median)
t=$(printf '%s\n' "${torch[@]}" | median)
python3 - "$r" "$t" "$device" "$threads" "$batch" "$steps" <<'PY'
import json, sys
r, t = float(sys.argv[1]), float(sys.argv[2])
print(json.dumps({"device": sys.argv[3], "threads": int(sys.argv[4]), "batch_size": int(sys.argv[5]), "steps": int(sys.argv[6]),
                  "nasop_trainer_images_per_second": round(r, 1), "pytorch_images_per_second": round(t, 1), "ratio": round(r / t, 3)}))
PY
