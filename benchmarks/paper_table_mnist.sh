#!/usr/bin/env bash
# Issue 18's paper table on real MNIST: fedconv (as shipped), heterofl, fedrolex, fedavg_small
# and fedavg_full (the upper reference) over Dirichlet alphas and seeds, one `fedconv-jax
# compare` per (seed, alpha). Reduced budget (state it when quoting): 10 rounds, 2 local
# epochs, 2 epochs per tuning loop, the paper's 20 clients, 2 devices; no baseline pre-trains
# (as in the paper).
#   FEDCONV_DATA_DIR=... benchmarks/paper_table_mnist.sh [WORKDIR] [SEED:ALPHA ...]
# then: python benchmarks/paper_table.py WORKDIR --out benchmarks/results/paper_table_mnist
#
# Resumable across sittings: a finished cell's metrics.jsonl and config.json are copied to
# $STORE (committed), and copied back into WORKDIR at the start, so compare skips them; an
# interrupted cell continues from its checkpoint in WORKDIR.
set -u
root=${1:-runs/paper_table_mnist}; shift || true
store=${STORE:-benchmarks/results/paper_table_mnist/runs}
algorithms=${ALGORITHMS:-fedconv,heterofl,fedrolex,fedavg_small,fedavg_full}
# Priority order: one seed everywhere at the alphas the done-when names first, then the seeds.
cells=(0:1 0:0.1 0:0.05 0:10000 1:1 1:0.1 2:1 2:0.1)
[ $# -gt 0 ] && cells=("$@")

. "$(dirname "$0")/run_store.sh"
sync_runs "$store" "$root"
for cell in "${cells[@]}"; do
  seed=${cell%%:*} alpha=${cell#*:}
  echo "$(date +%T) seed $seed alpha $alpha"
  fedconv-jax compare --config configs/mnist.py --algorithms "$algorithms" --alphas "$alpha" \
    --workdir "$root/seed$seed" --config.seed="$seed" --config.data_seed=0 \
    --config.rounds="${ROUNDS:-10}" --config.local_epochs=2 --config.compress_epochs=2 \
    --config.dilate_epochs=2 --config.aggregate_epochs=2 --config.devices=2 \
    --config.phase_timing=false --config.client_costs=false || echo "FAILED: seed $seed alpha $alpha"
  sync_runs "$root" "$store"
done
