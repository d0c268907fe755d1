# Sourced by the long benchmark scripts: keeps finished runs across sittings.
# sync_runs FROM TO: copies every finished run (metrics.jsonl with as many rows as its
# config.json's rounds) found two levels under FROM to the same place under TO. A run's
# directory holds checkpoints too; only these two small files travel (and are committed).
sync_runs() {
  local from=$1 to=$2 run rel rows want
  [ -d "$from" ] || return 0
  for run in "$from"/*/*/; do
    run=${run%/}
    [ -f "$run/config.json" ] && [ -f "$run/metrics.jsonl" ] || continue
    rel=${run#"$from"/}
    rows=$(grep -c '"round"' "$run/metrics.jsonl")
    want=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['rounds'])" "$run/config.json")
    [ "$rows" -ge "$want" ] || continue
    cmp -s "$run/metrics.jsonl" "$to/$rel/metrics.jsonl" && continue
    mkdir -p "$to/$rel" && cp "$run/metrics.jsonl" "$run/config.json" "$to/$rel/"
  done
}
