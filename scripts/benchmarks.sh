#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md. Usage: scripts/benchmarks.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-500}
data=${NASOP_NB201:-data/nasbench201}
cargo build --release --quiet
nasop=./target/release/nasop
echo "## machine: $(nproc) cores, $(uname -m), $(date -u +%Y-%m-%d)"
echo
echo "## NAS-Bench-201, every strategy, the paper's budgets ($runs runs each)"
for spec in "cifar10 12000" "cifar100 40000" "imagenet16 120000"; do
  set -- $spec
  $nasop bench nb201 --data "$data" --dataset "$1" --budget-seconds "$2" --strategy all --runs "$runs"
  echo
done
echo "## CIFAR-10 at a third of the budget (4,000 s)"
$nasop bench nb201 --data "$data" --budget-seconds 4000 --strategy all --runs "$runs"
echo
echo "## Multi-fidelity: 12-epoch rungs promoted to 200 epochs (CIFAR-10, 12,000 s)"
for f in asha successive-halving hyperband; do
  $nasop bench nb201 --data "$data" --fidelity "$f" --strategy bayesian --runs "$runs" | tail -1 | sed "s/^/$f + /"
done
echo
echo "## 8 simulated workers (CIFAR-10, 12,000 s of simulated time, $((runs / 5)) runs: ~750 trials a run)"
$nasop bench nb201 --data "$data" --workers 8 --budget-seconds 12000 --strategy all --runs "$((runs / 5))"
echo
echo "## Warm start from 100 random earlier results (spec.warmStart), against a cold start"
$nasop bench nb201 --data "$data" --warm-start 100 --strategy all --runs "$runs"
$nasop bench nb201 --data "$data" --warm-start 100 --dataset cifar100 --budget-seconds 40000 --strategy all --runs "$runs"
echo
echo "## Multi-objective: accuracy vs Pixel 3 latency, latency <= 20 ms (CIFAR-10, 12,000 s)"
$nasop bench nb201 --data "$data" --latency hwnas_pixel3_latency_ms --max-latency-ms 20 --strategy all --runs "$runs"
echo
echo "## One proposal after 1,000 results"
$nasop bench proposal --history 1000
