#!/usr/bin/env bash
# Issue 18's ablations on real MNIST: FedConv's learned steps switched off one at a time,
# against HeteroFL with the same pre-training. Reduced budget (state it when quoting):
# 10 rounds, 2 local epochs, 2 epochs per tuning loop, the paper's 20 clients, 2 devices.
# Resumable: a finished run is skipped, an interrupted one continues from its checkpoint;
# finished runs' metrics.jsonl and config.json are kept in $STORE (committed) and copied back
# into WORKDIR at the start, so a later sitting skips them too.
#   FEDCONV_DATA_DIR=... [ALPHAS="1 0.1"] benchmarks/ablations_mnist.sh [WORKDIR] [VARIANT ...]
# then: python benchmarks/ablations_table.py WORKDIR
set -u
root=${1:-runs/ablations_mnist}; shift || true
store=${STORE:-benchmarks/results/ablations_mnist/runs}
. "$(dirname "$0")/run_store.sh"
sync_runs "$store" "$root"
rounds=${ROUNDS:-10}
common=(--config configs/mnist.py --quiet
  --config.rounds="$rounds" --config.local_epochs=2 --config.compress_epochs=2
  --config.dilate_epochs=2 --config.aggregate_epochs=2 --config.devices=2
  --config.phase_timing=false --config.client_costs=false)
declare -A variant=(
  [fc_model]="--config.fedconv.dilation_target=model"
  [fc_update]="--config.fedconv.dilation_target=update"
  [fc_update_holders]="--config.fedconv.dilation_target=update --config.fedconv.aggregation_scope=holders"
  [fc_holders_nocompress]="--config.fedconv.dilation_target=update --config.fedconv.aggregation_scope=holders --config.compress_epochs=0"
  [fc_holders_nodilate]="--config.fedconv.dilation_target=update --config.fedconv.aggregation_scope=holders --config.dilate_epochs=0"
  [fc_holders_meanagg]="--config.fedconv.dilation_target=update --config.fedconv.aggregation_scope=holders --config.fedconv.aggregation=mean"
  [fc_holders_alloff]="--config.fedconv.dilation_target=update --config.fedconv.aggregation_scope=holders --config.compress_epochs=0 --config.dilate_epochs=0 --config.fedconv.aggregation=mean"
  [fc_update_nocompress]="--config.fedconv.dilation_target=update --config.compress_epochs=0"
  [fc_update_nodilate]="--config.fedconv.dilation_target=update --config.dilate_epochs=0"
  [fc_update_meanagg]="--config.fedconv.dilation_target=update --config.fedconv.aggregation=mean"
  [fc_update_alloff]="--config.fedconv.dilation_target=update --config.compress_epochs=0 --config.dilate_epochs=0 --config.fedconv.aggregation=mean"
  [fc_model_alloff]="--config.fedconv.dilation_target=model --config.compress_epochs=0 --config.dilate_epochs=0 --config.fedconv.aggregation=mean"
  [heterofl_pre]="--config.algorithm=heterofl --config.baseline_pretrain=true"
  [fedrolex_pre]="--config.algorithm=fedrolex --config.baseline_pretrain=true"
  [fedavg_full_pre]="--config.algorithm=fedavg_full --config.baseline_pretrain=true"
)
order=(fc_model fc_update fc_update_holders heterofl_pre fc_holders_nocompress fc_holders_nodilate
  fc_holders_alloff fc_holders_meanagg fc_update_alloff fc_update_nocompress fc_update_nodilate
  fc_update_meanagg fc_model_alloff fedrolex_pre fedavg_full_pre)
[ $# -gt 0 ] && order=("$@")
for name in "${order[@]}"; do
  for alpha in ${ALPHAS:-1 0.1}; do
    dir="$root/a$alpha/$name"
    rows=$( [ -f "$dir/metrics.jsonl" ] && grep -c '"round"' "$dir/metrics.jsonl" || echo 0 )
    [ "$rows" -ge "$rounds" ] && { echo "done: $dir"; continue; }
    resume=(); [ -d "$dir/checkpoints" ] && resume=(--resume)
    echo "$(date +%T) run: $dir ${resume[*]}"
    # shellcheck disable=SC2086
    fedconv-jax run "${common[@]}" --workdir "$dir" "${resume[@]}" --config.alpha="$alpha" \
      ${variant[$name]} || echo "FAILED: $dir"
    sync_runs "$root" "$store"
  done
done
