#!/usr/bin/env bash
# Trains the candidates for the shipped Fashion-MNIST model on a GPU machine, side by side on its
# one GPU, for a fixed wall time (a short loan cannot wait for step counts), measures each on the
# GPU as the README measures the shipped model, and packs each run's latest checkpoint (weights,
# configuration, metrics; EMA weights only where the run has them; no optimizer state) with its
# measurements as $OUT/run-NAME.tgz (in 15 MiB parts, run-NAME-partNN.tgz, when larger).
# `make gpu-check` starts it in the background with SHOWCASE_SECONDS > 0, while the tests run.
#
#   showcase_training.sh SECONDS DATA_DIR OUT
#
# DATA_DIR holds Debian's Fashion-MNIST files (train-* and t10k-*: the measurements edit test
# images). After training (SECONDS), each candidate gets at most SHOWCASE_EVAL_SECONDS (default
# 120) for `patronus visualize` at 25 steps (edit fidelity, reconstruction MSE; EMA weights) and
# `patronus evaluate fid` (2000 samples, DDIM 50 steps, the shipped model's feature classifier);
# $OUT/showcase-NAME.json sums them up.
#
#   SHOWCASE_CANDIDATES="base tbias"  train only these (default: "mid editc-frozen", the two not
#                                    measured on a GPU yet; fewer share the GPU with fewer and get
#                                    further in the same time)
#   SHOWCASE_DEVICE=cpu               a dry run here (default cuda)
#
# Each candidate is the shipped recipe (preset fmnist-cpu, AdamW 1e-3, EMA 0.999, gradient clip 1)
# at batch 128 with bf16 autocast, plus one change: base (none), tbias (timestep bias 1), cdrop
# (condition dropout 0.2), editc (edit consistency 0.1), all four measured on an H200
# (docs/edit-fidelity.md, "On a GPU, a little longer"); mid (the larger preset fmnist-mid, 5.4 M
# parameters, about the most whose EMA weights ship under 25 MB); or editc-frozen (the shipped model
# fine-tuned with edit consistency 0.1, its prototypes frozen, lr 5e-4 after 50 warm-up steps).
# Training runs from a copy of the package without the compiled extension (the build replaces it
# meanwhile); a run that fails within its first minute is retried once on the pure-PyTorch backend,
# and the retry is logged.
set -uo pipefail
SECONDS_LIMIT=$1
DEVICE=${SHOWCASE_DEVICE:-cuda}
PY=${PYTHON:-python3}
[[ $PY == */* ]] && PY=$(realpath -s "$PY")  # absolute, symlinks kept (a venv's python is one)
cd "$(dirname "$0")/.."
REPO=$(pwd)
DATA=$(realpath -m "$2")
OUT=$(realpath -m "$3")
declare -A CHANGE=(
    [base]=""
    [tbias]="--timestep-bias 1"
    [cdrop]="--condition-dropout 0.2"
    [editc]="--edit-consistency 0.1"
    [editc-frozen]="--init-from $REPO/assets/fmnist-patronus --freeze-prototypes --edit-consistency 0.1
        --lr 5e-4 --warmup 50"
    [mid]="--preset fmnist-mid"
)
CANDIDATES=${SHOWCASE_CANDIDATES:-mid editc-frozen}
for name in $CANDIDATES; do
    [ -n "${CHANGE[$name]+set}" ] || { echo "unknown candidate $name (${!CHANGE[*]})" >&2; exit 2; }
done
SRC=$(mktemp -d)
cp -r patronus kernels "$SRC"/
rm -f "$SRC"/patronus/_C*.so
RUNS=$(mktemp -d)
mkdir -p "$OUT"

EVAL_SECONDS=${SHOWCASE_EVAL_SECONDS:-120}

from_copy() {  # from_copy COMMAND...: COMMAND importing patronus from the copy: `python -m`
    # puts its working directory first on sys.path, ahead of PYTHONPATH, so it runs in the copy
    (cd "$SRC" && PYTHONPATH="$SRC" "$@")
}

within() {  # within END COMMAND...: COMMAND with the seconds left until END (skipped if none)
    local left=$(($1 - $(date +%s)))
    shift
    ((left > 0)) || { echo "no time left for: $*"; return 124; }
    from_copy timeout --signal=INT --kill-after=15 "$left" "$@"
}

measure_one() {  # measure_one NAME: edit fidelity and FID of a trained run, summed up in $OUT
    local name=$1 run="$RUNS/$name" into="$RUNS/measure-$name" ends=$(($(date +%s) + EVAL_SECONDS))
    local -a common=(--data-dir "$DATA" --device "$DEVICE" --no-progress --seed 0)
    mkdir -p "$into"
    within "$ends" "$PY" -m patronus visualize "$run" --steps 25 --num-images 8 --pool-size 256 \
        "${common[@]}" --out "$into/visualize"
    within "$ends" "$PY" -m patronus evaluate fid "$run" --num 2000 --steps 50 --sampler ddim \
        --classifier "$REPO/assets/fmnist-patronus/classifier" "${common[@]}" --out "$into/fid"
    "$PY" benchmarks/showcase_summary.py "$name" "$run" "$into" >"$OUT/showcase-$name.json"
}

train_one() {  # train_one NAME: trains until the wall time is spent, then packs the run
    local name=$1 began=$(date +%s) rc=0 log="$RUNS/$name.log"
    local -a command=("$PY" -m patronus train --preset fmnist-cpu --data-dir "$DATA"
        --out "$RUNS/$name" --steps 1000000 --batch-size 128 --lr 1e-3 --warmup 500 --ema 0.999
        --log-every 100 --checkpoint-every 2000 --no-progress --seed 0 --device "$DEVICE" --amp bf16)
    # shellcheck disable=SC2206
    command+=(${CHANGE[$name]})
    OMP_NUM_THREADS=2 from_copy timeout --signal=INT --kill-after=60 "$SECONDS_LIMIT" \
        "${command[@]}" >"$log" 2>&1 || rc=$?
    if ((rc != 0 && rc != 124 && rc != 130 && $(date +%s) - began < 60)); then
        echo "== failed (rc=$rc) within a minute: retrying on PATRONUS_BACKEND=torch" >>"$log"
        rm -rf "${RUNS:?}/$name"
        PATRONUS_BACKEND=torch OMP_NUM_THREADS=2 from_copy timeout --signal=INT \
            --kill-after=60 $((SECONDS_LIMIT - ($(date +%s) - began))) \
            "${command[@]}" >>"$log" 2>&1 || rc=$?
    fi
    echo "== $name: rc=$rc after $(($(date +%s) - began))s" >>"$log"
    local latest
    latest=$(cat "$RUNS/$name/checkpoints/latest" 2>/dev/null)
    local -a files=("$name.log")
    if [ -n "$latest" ]; then
        measure_one "$name" >>"$log" 2>&1
        files+=("measure-$name")
        mkdir -p "$RUNS/pack-$name"
        cp "$RUNS/$name/checkpoints/$latest"/*.json "$RUNS/$name/checkpoints/$latest"/*.safetensors \
            "$RUNS/pack-$name"/
        rm -f "$RUNS/pack-$name"/train_state.*
        # the EMA weights are what is measured and would ship: the raw ones stay behind
        [ -f "$RUNS/pack-$name/ema.safetensors" ] && rm -f "$RUNS/pack-$name/model.safetensors"
        cp "$RUNS/$name"/metrics.csv "$RUNS/$name"/loss_curve.png "$RUNS/pack-$name"/ 2>/dev/null
        files+=("pack-$name")
    fi
    tar -czf "$OUT/run-$name.tgz" -C "$RUNS" "${files[@]}"
    # the device tool brings back files of at most 16 MiB: larger archives come in parts,
    # run-NAME-partNN.tgz, joined by `cat run-NAME-part*.tgz | tar -xz`
    if (($(stat -c %s "$OUT/run-$name.tgz") > 15 * 1024 * 1024)); then
        split -b 15M -d "$OUT/run-$name.tgz" "$OUT/run-$name-part" &&
            for part in "$OUT/run-$name-part"[0-9][0-9]; do mv "$part" "$part.tgz"; done &&
            rm "$OUT/run-$name.tgz"
    fi
}

for name in $CANDIDATES; do
    train_one "$name" &
done
wait
rm -rf "$SRC"
