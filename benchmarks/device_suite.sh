#!/usr/bin/env bash
# Issue 19, point 4: the accelerator benchmarks in one command, one JSON file.
#
#   bash benchmarks/device_suite.sh [--out PATH] [--budget SECONDS]   # full mode, a fresh GPU machine
#   bash benchmarks/device_suite.sh --cpu [--out PATH]                # dry run on CPU, smallest sizes
#
# Run from the repository root. Steps (each its own process, each under its own `timeout`,
# and none started past the suite's budget; a failing, timed-out or skipped step is recorded
# and the suite goes on):
#   rt_k{100,1000}_{im2col,lax}  benchmarks/round_throughput.py: client training at 100 and
#                                1,000 clients, lax.map vs vmap, im2col vs lax.conv (no torch,
#                                no loop at 1,000, no map@D: one GPU)
#   paper_round                  benchmarks/paper_round.py: the paper's MNIST round per phase,
#                                then fused (synthetic MNIST-shaped data: no data on the machine)
#   scale                        benchmarks/scale.py at 100 and 1,000 clients (--no-phases)
#   sweep_k16                    `fedconv-jax sweep` at K = 16 (--run-axis vmap) against
#                                separate `fedconv-jax run`s, through benchmarks/sweep.py's
#                                helpers (sweep.py itself always runs K = 1, 4, 16 x map, vmap:
#                                22 CLI processes, too long for this budget)
# Output (--out; default $OUT/device_suite.json when $OUT is set, else
# benchmarks/results/device_suite.json):
#   {"jax", "devices", "backend", "mode", ..., "steps": {name: {"args", "seconds",
#    "returncode", "result" (the step's own JSON or null), "stderr_tail" (when it failed)}}}
#
# Full-mode sizing (one H200; nothing here was measured on a GPU yet). Assumed: 5-10 s per
# process for Python + JAX + CUDA start; 5-15 s to compile round_throughput's small client-
# training programs and the smoke-config sweep; 15-40 s per FedConv MNIST round or phase
# program; about 0.5 ms per sequential batch-32 step inside a compiled loop. Estimates:
# rt_k100 x2 about 25-35 s each, rt_k1000 x2 35-45 s each (5,000 sequential steps per lax.map
# call), paper_round 150-210 s (6 phase programs + the fused round), scale 80-100 s (2 round
# programs), sweep_k16 70-100 s (3 CLI processes), wheels + merge about 15 s: 7-9 minutes in
# all. The per-step timeouts below cap each step, and the budget (default 465 s) shortens a
# step's timeout to what is left of it and skips a step when under 20 s are left, so the
# suite ends before 8 minutes even when the estimates are low; the steps cut (killed or
# skipped) are then the last ones (scale, sweep_k16).
#
# The GPU machine (Python 3.12, JAX + CUDA, flax, optax, orbax, chex, scikit-learn, tqdm,
# matplotlib; no network) lacks ml_collections (pure Python, imported by fedconv_jax.config),
# and maybe filelock (the CLI's compilation-cache cap). Prepare their wheels here once (the
# folder is git-ignored, carried with `carry: [".whl"]`):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl ml_collections==1.1.0 filelock absl-py==2.5.1 PyYAML==6.0.4
# ml_collections' METADATA requires absl-py and PyYAML (chex and orbax need them too, so the
# machine should have them); the script installs, without dependencies, only the carried
# wheels whose distribution is not installed already, into /tmp/site. The package itself is
# not installed: the repository root goes on PYTHONPATH.
set -u

cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
PY=${PYTHON:-python3}
MODE=full
OUT_FILE=""
BUDGET=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=cpu ;;
        --out) OUT_FILE=$2; shift ;;
        --out=*) OUT_FILE=${1#--out=} ;;
        --budget) BUDGET=$2; shift ;;
        --budget=*) BUDGET=${1#--budget=} ;;
        -h|--help) sed -n '2,/^set -u/p' "$0" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) echo "device_suite: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$OUT_FILE" ]; then
    if [ -n "${OUT:-}" ]; then OUT_FILE=$OUT/device_suite.json; else OUT_FILE=$ROOT/benchmarks/results/device_suite.json; fi
fi
case "$OUT_FILE" in /*) ;; *) OUT_FILE=$ROOT/$OUT_FILE ;; esac

if [ "$MODE" = cpu ]; then
    export JAX_PLATFORMS=cpu
    # A dry run times nothing: XLA:CPU's optimisation level 0 compiles about 1.5x faster.
    case "${XLA_FLAGS:-}" in *xla_backend_optimization_level*) ;; *)
        export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0" ;; esac
    BUDGET=${BUDGET:-600}
    MIN_STEP=5
else
    BUDGET=${BUDGET:-465}  # leaves about 15 s of the 8 minutes for the wheels and the merge
    MIN_STEP=20
fi

START_NS=$(date +%s%N)
now_s() { echo $(( ($(date +%s%N) - START_NS) / 1000000000 )); }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_suite.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Carried wheels: install the missing ones only (a carried wheel of an installed distribution
# would shadow it, and a cp312 binary wheel cannot load under another Python).
SITE=""
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    MISSING=$("$PY" - .whl/*.whl <<'EOF'
import importlib.metadata as md
import pathlib
import sys

for wheel in sys.argv[1:]:
    name = pathlib.Path(wheel).name.split("-")[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        print(wheel)
EOF
)
    if [ -n "$MISSING" ]; then
        SITE=/tmp/site
        # shellcheck disable=SC2086
        PIP_ROOT_USER_ACTION=ignore "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" $MISSING \
            || for w in $MISSING; do "$PY" -m zipfile -e "$w" "$SITE"; done  # no pip: a wheel is a zip
        echo "device_suite: installed $(echo $MISSING | tr ' ' '\n' | xargs -n1 basename | tr '\n' ' ')into $SITE"
    fi
fi
export PYTHONPATH="${SITE:+$SITE:}$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Runs benchmarks/<script> with its module-level RESULTS folder redirected (scale.py and
# paper_round.py write to RESULTS and have no --out): argv = results_dir script args...
read -r -d '' WITH_RESULTS <<'EOF'
import importlib, pathlib, sys
results, script, *argv = sys.argv[1:]
sys.path.insert(0, str(pathlib.Path(script).parent))
module = importlib.import_module(pathlib.Path(script).stem)
module.RESULTS = pathlib.Path(results)
sys.argv = [script, *argv]
module.main(argv)
EOF

# `fedconv-jax sweep` at one K against separate `fedconv-jax run`s of the same combinations,
# with benchmarks/sweep.py's grid() and _cli() (each CLI call a fresh process and cache).
read -r -d '' SWEEP_AT_K <<'EOF'
import argparse, json, pathlib, shutil, statistics, sys, tempfile
sys.path.insert(0, "benchmarks")
import sweep

p = argparse.ArgumentParser()
p.add_argument("--k", type=int, default=16)
p.add_argument("--axes", nargs="+", default=["vmap"])
p.add_argument("--separate", type=int, default=2, help="separate runs timed (the first compiles)")
p.add_argument("--rounds", type=int, default=5)
p.add_argument("--tiny", action="store_true", help="2 clients of SR 0.5, 1 epoch everywhere")
p.add_argument("--out", required=True)
args = p.parse_args()
overrides = [f"--config.rounds={args.rounds}", "--config.client_costs=false"]
if args.tiny:
    overrides += ["--config.num_clients=2", "--config.shrink_ratios=(0.5, 0.5)", "--config.local_epochs=1",
                  "--config.pretrain_epochs=0", "--config.compress_epochs=1", "--config.dilate_epochs=1",
                  "--config.aggregate_epochs=1"]
config = str(sweep.ROOT / "configs" / "smoke.py")
lrs, seeds = sweep.grid(args.k)
combos = [(lr, seed) for lr in lrs for seed in seeds]
scratch = pathlib.Path(tempfile.mkdtemp(prefix="device_suite_sweep_"))
try:
    separate = []
    for lr, seed in combos[: args.separate]:
        separate.append(sweep._cli(
            ["run", "--config", config, "--workdir", str(scratch / f"run_{lr}_{seed}"), *overrides,
             f"--config.local_lr={lr}", f"--config.seed={seed}", "--config.data_seed=0", "--config.checkpoint_every=0"],
            scratch / "cache_separate",
        ))
        print(f"separate run {len(separate)}: {separate[-1]:.1f} s", flush=True)
    swept = {}
    for axis in args.axes:
        swept[axis] = sweep._cli(
            ["sweep", "--config", config, "--workdir", str(scratch / f"sweep_{axis}"), *overrides,
             f"--sweep.local_lr={','.join(lrs)}", f"--sweep.seed={','.join(seeds)}", "--run-axis", axis],
            scratch / f"cache_{axis}",
        )
        print(f"sweep {axis} K={args.k}: {swept[axis]:.1f} s", flush=True)
    same = 0
    for lr, seed in combos[: args.separate]:
        a = (scratch / f"sweep_{args.axes[0]}" / f"local_lr={float(lr):g},seed={seed}" / "metrics.jsonl")
        b = scratch / f"run_{lr}_{seed}" / "metrics.jsonl"
        last = [json.loads(f.read_text().splitlines()[-1])["global_params_digest"] for f in (a, b)]
        same += last[0] == last[1]
finally:
    shutil.rmtree(scratch, ignore_errors=True)
# K separate runs: the first compiles, the others load its programs from the cache.
estimate = separate[0] + (args.k - 1) * statistics.median(separate[1:]) if len(separate) > 1 else None
report = {
    "k": args.k, "overrides": overrides, "separate_run_seconds": separate, "separate_k_runs_estimate_s": estimate,
    "sweep_seconds": swept, "separate_over_sweep": {a: estimate / s for a, s in swept.items()} if estimate else None,
    "digests_equal": same, "digests_compared": len(separate),
}
print(json.dumps(report))
pathlib.Path(args.out).write_text(json.dumps(report, indent=2))
EOF

# step NAME TIMEOUT_S KIND ARGS...: KIND "out" appends --out <dir>/result.json, "results"
# redirects RESULTS to <dir>, "sweep" runs SWEEP_AT_K. ARGS[0] is the script.
STEPS=()
step() {
    local name=$1 limit=$2 kind=$3; shift 3
    local dir=$WORK/steps/$name
    mkdir -p "$dir"
    STEPS+=("$name")
    if [ "$kind" = sweep ]; then  # what runs: SWEEP_AT_K above, which imports sweep.py
        printf '%s\n' "python" "-c" "<SWEEP_AT_K of device_suite.sh: sweep.py's grid() and _cli()>" "${@:2}"
    else
        printf '%s\n' "python" "$@"
    fi > "$dir/args.txt"
    local left=$(( BUDGET - $(now_s) ))
    if [ "$left" -lt "$MIN_STEP" ]; then
        echo "skipped: ${left} s of the ${BUDGET} s budget left" > "$dir/skipped.txt"
        echo "device_suite: $name skipped (${left} s left)"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "$limit" > "$dir/timeout.txt"
    local cmd
    case "$kind" in
        out) cmd=("$PY" "$@" --out "$dir/result.json") ;;
        results) cmd=("$PY" -c "$WITH_RESULTS" "$dir" "$@") ;;
        sweep) shift; cmd=("$PY" -c "$SWEEP_AT_K" "$@" --out "$dir/result.json") ;;
    esac
    echo "device_suite: $name (timeout ${limit} s): ${*}"
    local t0 rc
    t0=$(date +%s%N)
    timeout --kill-after=10 "$limit" "${cmd[@]}" > "$dir/stdout.txt" 2> "$dir/stderr.txt" < /dev/null
    rc=$?
    echo "$(( $(date +%s%N) - t0 ))" > "$dir/ns.txt"
    echo "$rc" > "$dir/rc.txt"
    echo "device_suite: $name rc=$rc $(( ($(date +%s%N) - t0) / 1000000 )) ms; suite at $(now_s) s"
    tail -n 2 "$dir/stdout.txt" | cut -c1-300
    [ "$rc" -ne 0 ] && tail -n 5 "$dir/stderr.txt" | cut -c1-300
}

RT=benchmarks/round_throughput.py
if [ "$MODE" = cpu ]; then
    for k in 2 4; do
        for impl in im2col lax; do
            step "rt_k${k}_${impl}" 90 out $RT --clients "$k" --samples 64 --images 1000 --repeats 1 \
                --strategies map vmap --conv-impl "$impl"
        done
    done
    step paper_round 150 results benchmarks/paper_round.py --quick
    step scale 150 results benchmarks/scale.py --quick
    step sweep_k2 240 sweep benchmarks/sweep.py --k 2 --axes map --separate 1 --rounds 1 --tiny
else
    for impl in im2col lax; do
        step "rt_k100_${impl}" 60 out $RT --clients 100 --samples 320 --repeats 3 \
            --strategies map vmap --conv-impl "$impl"
    done
    for impl in im2col lax; do
        step "rt_k1000_${impl}" 80 out $RT --clients 1000 --samples 160 --repeats 2 \
            --strategies map vmap --conv-impl "$impl"
    done
    step paper_round 210 results benchmarks/paper_round.py
    step scale 130 results benchmarks/scale.py --clients 100 1000 --no-phases
    step sweep_k16 120 sweep benchmarks/sweep.py --k 16 --axes vmap --separate 2 --rounds 5
fi

mkdir -p "$(dirname "$OUT_FILE")"
"$PY" - "$WORK" "$OUT_FILE" "$MODE" "$BUDGET" "$(( ($(date +%s%N) - START_NS) / 1000000 ))" "$SITE" "${STEPS[@]}" <<'EOF'
import json
import pathlib
import platform
import subprocess
import sys

work, out, mode, budget, elapsed_ms, site, *names = sys.argv[1:]
steps_dir = pathlib.Path(work) / "steps"


def text(path, default=None):
    return path.read_text() if path.exists() else default


steps = {}
for name in names:
    d = steps_dir / name
    entry = {"args": text(d / "args.txt", "").splitlines()}
    if (d / "skipped.txt").exists():
        entry.update(seconds=None, returncode=None, result=None, skipped=text(d / "skipped.txt").strip())
        steps[name] = entry
        continue
    rc = int(text(d / "rc.txt", "-1"))
    entry.update(seconds=int(text(d / "ns.txt", "0")) / 1e9, returncode=rc, timeout_s=int(text(d / "timeout.txt")))
    results = sorted(p for p in d.glob("*.json"))
    result = None
    try:
        if len(results) == 1:
            result = json.loads(results[0].read_text())
        elif results:
            result = {p.name: json.loads(p.read_text()) for p in results}
    except ValueError as error:
        entry["result_error"] = str(error)
    entry["result"] = result
    if rc != 0:
        entry["timed_out"] = rc in (124, 137)
        entry["stderr_tail"] = text(d / "stderr.txt", "").splitlines()[-20:]
        entry["stdout_tail"] = text(d / "stdout.txt", "").splitlines()[-5:]
    steps[name] = entry

report = {"mode": mode, "budget_s": int(budget), "python": platform.python_version(), "platform": platform.platform(),
          "carried_wheels_installed_to": site or None}
try:
    import jax

    report.update(jax=jax.__version__, backend=jax.default_backend(), devices=str(jax.devices()))
except Exception as error:  # the steps' results stand without it
    report.update(jax=None, backend=None, devices=None, jax_error=repr(error))
try:
    report["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20, check=False,
    ).stdout.strip()
except (OSError, subprocess.SubprocessError):
    report["nvidia_smi"] = None
report["steps_seconds"] = int(elapsed_ms) / 1e3
report["steps"] = steps
pathlib.Path(out).write_text(json.dumps(report, indent=2))
ok = sum(s["returncode"] == 0 and s["result"] is not None for s in steps.values())
print(f"device_suite: {ok} of {len(steps)} steps ok; {report['steps_seconds']:.0f} s of steps; wrote {out}")
for name, s in steps.items():
    state = "skipped" if s.get("skipped") else f"rc {s['returncode']}, {s['seconds']:.1f} s"
    print(f"  {name}: {state}{'' if s.get('result') is not None else ', no result'}")
EOF
