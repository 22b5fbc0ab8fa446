#!/usr/bin/env bash
# nasop-trainer data-parallel against itself on one process, same recipe, data and cores, in
# one run: one process with all the threads, then RANKS ranks (processes on loopback, gloo
# through libtorch's process group) sharing them. Prints one JSON line per run and the ratio.
# Usage: scripts/bench-data-parallel.sh (`make bench-data-parallel`, ~4 minutes on 2 cores).
# On one machine the ranks share its cores, so the ratio says what the exchange costs and
# what splitting the batch gains there; across pods each rank has its own.
# On a GPU machine: DEVICE=cuda (one process on GPU 0, then rank r on GPU r modulo the GPUs;
# the gradients go through host memory and gloo, as in a pod).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-$(nproc)}
ranks=${RANKS:-2}
epochs=${EPOCHS:-3}
limit=${LIMIT:-20000}
data=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
arch=${ARCH:-'|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'}
trainer=${TRAINER:-target/release/nasop-trainer}
[ -x "$trainer" ] || { echo "build the trainer first: make build" >&2; exit 1; }
[ -d "$data" ] || { echo "Fashion-MNIST is missing at $data: make data" >&2; exit 1; }
device=${DEVICE:-cpu}
gpus=1
[ "$device" = cuda ] && gpus=$(nvidia-smi -L | wc -l)
per_rank=$(( threads / ranks > 0 ? threads / ranks : 1 ))
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
common=(train --arch "$arch" --dataset fashion-mnist --data-dir "$data" --recipe nb201 --seed 1
  --epochs "$epochs" --limit "$limit" --valid-fraction 0.25 --channels 16 --cells-per-stage 1
  --device "$device")

echo "one process, $threads threads" >&2
CUDA_VISIBLE_DEVICES=0 "$trainer" "${common[@]}" --threads "$threads" >"$out/one.jsonl" 2>"$out/one.err"
echo "$ranks ranks, $per_rank threads each" >&2
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
for r in $(seq 1 $((ranks - 1))); do
  CUDA_VISIBLE_DEVICES=$((r % gpus)) WORLD_SIZE=$ranks RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$trainer" "${common[@]}" --threads "$per_rank" >/dev/null 2>"$out/rank$r.err" &
  pids+=($!)
done
CUDA_VISIBLE_DEVICES=0 WORLD_SIZE=$ranks RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
  "$trainer" "${common[@]}" --threads "$per_rank" >"$out/ranks.jsonl" 2>"$out/rank0.err"
for p in "${pids[@]}"; do wait "$p"; done

python3 - "$out" "$ranks" "$threads" "$per_rank" "$limit" <<'PY'
import json, sys
out, ranks, threads, per_rank, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def summary(name):
    lines = [json.loads(l) for l in open(f"{out}/{name}.jsonl")]
    epochs = [l for l in lines if l.get("end") is None]
    final = lines[-1]["metrics"]
    # Training images per epoch: the limit less the quarter held out for validation.
    seconds = sum(l["metrics"]["epoch_seconds"] for l in epochs) / len(epochs)
    return {"epoch_seconds": round(seconds, 2), "images_per_second": round(limit * 0.75 / seconds),
            "val_accuracy": round(final["val_accuracy"], 4), "test_accuracy": round(final["test_accuracy"], 4)}
one, many = summary("one"), summary("ranks")
print(json.dumps({"run": "one process", "threads": threads, **one}))
print(json.dumps({"run": f"{ranks} ranks", "threads_per_rank": per_rank, **many}))
print(json.dumps({"speedup": round(one["epoch_seconds"] / many["epoch_seconds"], 2),
                  "test_accuracy_difference": round(many["test_accuracy"] - one["test_accuracy"], 4)}))
PY
grep -h "weights digest" "$out"/rank*.err >&2
