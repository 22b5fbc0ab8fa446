#!/usr/bin/env bash
# nasop-trainer against PyTorch eager 2.11.0 (the torch tch 0.24 is built on), same network,
# recipe, data and threads, in one run. Usage: scripts/bench-trainer.sh [cpu|cuda]
#
# cpu (`make bench-trainer`, about 15 minutes on 2 cores):
#   1. training: Fashion-MNIST, the nb201 recipe (batch 256, SGD Nesterov, cosine lr 0.1,
#      weight decay 5e-4, pad-4 crop + flip) for EPOCHS epochs on LIMIT images (a quarter held
#      out), SEEDS seeds each, runs interleaved: mean and spread of the test accuracy, and
#      images/s of the whole loop (batching, augmentation, loss read-back, validation);
#   2. the training step alone on random CIFAR-sized batches (STEPS steps, batch BATCH).
# cuda: the step alone, in bf16 autocast and in fp32 (under 5 minutes on one GPU).
# The PyTorch side needs a Python torch: the installed one if it imports, else a venv with
# torch 2.11.0 from PyPI (with its CUDA dependencies, ~2.6 GB, cached in ~/.cache/nasop).
set -euo pipefail
cd "$(dirname "$0")/.."
device=${1:-cpu}
threads=${THREADS:-$(nproc)}
arch=${ARCH:-'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'}
steps=${STEPS:-30}
batch=${BATCH:-64}
seeds=${SEEDS:-3}
epochs=${EPOCHS:-3}
limit=${LIMIT:-20000}
cells=${CELLS:-1}
data=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
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
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if [ "$device" = cpu ]; then
  [ -d "$data" ] || { echo "Fashion-MNIST is missing at $data: make data" >&2; exit 1; }
  common=(--epochs "$epochs" --limit "$limit" --valid-fraction 0.25 --channels 16 --cells-per-stage "$cells" --threads "$threads")
  for seed in $(seq 1 "$seeds"); do   # interleaved, so drift in the machine hits both alike
    echo "training, seed $seed of $seeds: nasop-trainer" >&2
    "$trainer" train --arch "$arch" --dataset fashion-mnist --data-dir "$data" --recipe nb201 --seed "$seed" \
      "${common[@]}" --device cpu > "$out/nasop-$seed.jsonl" 2> "$out/nasop-$seed.log"
    echo "training, seed $seed of $seeds: PyTorch" >&2
    "$python" trainer/bench/pytorch_nb201.py "$arch" --train --data-dir "$data" --seed "$seed" \
      --batch-size 256 --learning-rate 0.1 --weight-decay 5e-4 --augment true "${common[@]}" \
      > "$out/torch-$seed.jsonl" 2> "$out/torch-$seed.log"
  done
  python3 - "$out" "$seeds" "$limit" <<'PY'
import json, statistics, sys
out, seeds, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rows(path):
    return [json.loads(l) for l in open(path) if l.startswith("{")]
train_images = limit - round(limit * 0.25)
acc, ips = {"nasop": [], "torch": []}, {"nasop": [], "torch": []}
for s in range(1, seeds + 1):
    r = rows(f"{out}/nasop-{s}.jsonl")
    epochs = [x for x in r if "epoch_seconds" in x["metrics"]][:-1]
    acc["nasop"].append(r[-1]["metrics"]["test_accuracy"])
    ips["nasop"].append(train_images * len(epochs) / sum(x["metrics"]["epoch_seconds"] for x in epochs))
    t = rows(f"{out}/torch-{s}.jsonl")[-1]
    assert t["train_images"] == train_images, t
    acc["torch"].append(t["test_accuracy"])
    ips["torch"].append(t["images_per_second"])
def ms(v):
    return round(statistics.mean(v), 4), round(statistics.stdev(v) if len(v) > 1 else 0.0, 4)
print(json.dumps({"benchmark": "training", "seeds": seeds, "train_images": train_images,
    "nasop_test_accuracy": ms(acc["nasop"]), "pytorch_test_accuracy": ms(acc["torch"]),
    "nasop_images_per_second": ms(ips["nasop"]), "pytorch_images_per_second": ms(ips["torch"]),
    "ratio": round(statistics.mean(ips["nasop"]) / statistics.mean(ips["torch"]), 3),
    "per_seed": {"nasop": {"accuracy": acc["nasop"], "images_per_second": [round(x, 1) for x in ips["nasop"]]},
                 "pytorch": {"accuracy": acc["torch"], "images_per_second": [round(x, 1) for x in ips["torch"]]}}}))
PY
  precisions=(fp32)
else
  precisions=(bf16 fp32)
fi

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for precision in "${precisions[@]}"; do
  rust=(); torch=()
  for round in 1 2 3; do   # interleaved
    rust+=("$("$trainer" bench --arch "$arch" --steps "$steps" --batch-size "$batch" --threads "$threads" --device "$device" --precision "$precision" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
    torch+=("$("$python" trainer/bench/pytorch_nb201.py "$arch" --steps "$steps" --batch-size "$batch" --threads "$threads" --device "$device" --precision "$precision" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
  done
  r=$(printf '%s\n' "${rust[@]}" | median)
  t=$(printf '%s\n' "${torch[@]}" | median)
  python3 - "$r" "$t" "$device" "$threads" "$batch" "$steps" "$precision" <<'PY'
import json, sys
r, t = float(sys.argv[1]), float(sys.argv[2])
print(json.dumps({"benchmark": "step", "device": sys.argv[3], "precision": sys.argv[7], "threads": int(sys.argv[4]),
                  "batch_size": int(sys.argv[5]), "steps": int(sys.argv[6]),
                  "nasop_trainer_images_per_second": round(r, 1), "pytorch_images_per_second": round(t, 1), "ratio": round(r / t, 3)}))
PY
done
