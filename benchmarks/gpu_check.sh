#!/usr/bin/env bash
# The one command for a GPU machine (`make gpu-check`), sized to a short loan: it uses the
# machine's python3 as it is (no venv, no installs), builds the extension in place, then runs
# stages in order of importance, each time-boxed, writing its log (and benchmark JSON) under $OUT
# as it goes, and the Markdown tables after every benchmark stage, so that a timeout still leaves
# everything that finished. $OUT/stages.txt says how each stage ended.
#
#   OUT=folder            where results go (default benchmarks/results/gpu)
#   STAGES="a b ..."      run only these stages (a rerun after a fix), default all, in this order:
#     build      the extension (CPU and CUDA kernels) with this python3
#     op-tests   the ops' CUDA tests (tests/ops -m cuda): Triton and CUDA kernels against float64
#     cuda-tests the remaining CUDA tests (models: bf16 training, CUDA-graph sampling)
#     proto      the prototype op at B64 D256 32x32 P2000, fp32, bf16, tf32: original two-conv form,
#                eager, torch.compile, patronus; forward, backward, forward+backward, peak memory
#     step       the scheduler step against a copy, eager, torch.compile and diffusers (DDIM),
#                and the DPM-Solver++ 3M step against diffusers
#     loops      50-step (then 1000-step) sampling loops: eager, fused, compiled, CUDA graph,
#                and the network calls alone
#     train      fmnist32 training step: the original code as it trains, ours fp32/bf16/
#                channels_last/compile (the original's code must be carried in benchmarks/.original)
#     proto-paper the prototype op at the paper's shapes
#   BUDGET=seconds        total time for the stages (default 520); a stage gets what is left
#   PYTHON=python3        the interpreter
#   SHOWCASE_SECONDS=n    also train the shipped model's candidates for n seconds in the background
#                         (benchmarks/showcase_training.sh, data from SHOWCASE_DATA: Fashion-
#                         MNIST's train-* and t10k-* files), while the build and the tests run,
#                         then measure them (up to SHOWCASE_EVAL_SECONDS more); the benchmark
#                         stages wait for it (default 0)
#   PACK=1                end by packing everything into $OUT/gpu-check.tgz (the device tool
#                         brings back a few files only)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
PY=${PYTHON:-python3}
BUDGET=${BUDGET:-520}
ALL="build op-tests cuda-tests proto step loops train proto-paper"
STAGES=${STAGES:-$ALL}
mkdir -p "$OUT"
# run from the source tree (patronus.kernels reads the top-level kernels/ folder)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
STATUS=0
BENCH=(-q -p no:cacheprovider --benchmark-min-rounds=3 --benchmark-max-time=0.3)

wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# stage NAME LIMIT COMMAND...: runs COMMAND for at most LIMIT seconds (less if the budget has
# less left; skipped under 20 s), its output in $OUT/NAME.txt.
stage() {
    local name=$1 limit=$2
    shift 2
    wanted "$name" || return 0
    local left=$((BUDGET - ($(date +%s) - START)))
    if ((left < 20)); then
        echo "$name: skipped, ${left}s of the ${BUDGET}s budget left" | tee -a "$OUT/stages.txt"
        return 0
    fi
    ((limit > left)) && limit=$left
    local begun=$(date +%s) rc=0
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.txt" 2>&1 || rc=$?
    local took=$(($(date +%s) - begun))
    local how="rc=$rc"
    ((rc == 124 || rc == 130)) && how="timed out"
    echo "$name: $how after ${took}s (limit ${limit}s)" | tee -a "$OUT/stages.txt"
    tail -n 4 "$OUT/$name.txt"
    ((rc == 0)) || STATUS=1
}

tables() {  # the Markdown tables of every benchmark JSON so far (none yet: nothing to do)
    local files=("$OUT"/bench-*.json)
    [ -e "${files[0]}" ] || return 0
    "$PY" benchmarks/report.py "${files[@]}" --out "$OUT" >/dev/null
}

bench() {  # bench NAME LIMIT PYTEST-ARGS...: a benchmark stage, then the tables
    local name=$1 limit=$2
    shift 2
    stage "$name" "$limit" "$PY" -m pytest "${BENCH[@]}" --benchmark-json="$OUT/bench-$name.json" "$@"
    wanted "$name" && { tables || echo "report of $name failed" | tee -a "$OUT/stages.txt"; }
}

{
    echo "started $(date -u +%FT%TZ), stages: $STAGES, budget ${BUDGET}s"
    "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
    for module in numpy safetensors tqdm PIL matplotlib diffusers scipy; do
        "$PY" -c "import $module" 2>/dev/null && echo "$module: yes" || echo "$module: missing"
    done
    [ -d benchmarks/.original/models ] && echo "original code: carried" || echo "original code: absent"
} | tee "$OUT/versions.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

SHOWCASE_PID=
if ((${SHOWCASE_SECONDS:-0} > 0)); then
    bash benchmarks/showcase_training.sh "$SHOWCASE_SECONDS" "${SHOWCASE_DATA:?}" "$OUT" \
        >"$OUT/showcase.txt" 2>&1 &
    SHOWCASE_PID=$!
fi

stage build 180 "$PY" setup.py build_ext --inplace
wanted build && { "$PY" -m patronus info | tee "$OUT/info.txt"; }
stage op-tests 240 "$PY" -m pytest tests/ops -m cuda -q -ra -p no:cacheprovider \
    --junitxml="$OUT/op-tests.xml"
stage cuda-tests 60 "$PY" -m pytest tests -m cuda -q -ra -p no:cacheprovider \
    --ignore=tests/ops --junitxml="$OUT/cuda-tests.xml"
if [ -n "$SHOWCASE_PID" ]; then  # the benchmarks time the GPU alone
    wait "$SHOWCASE_PID"
    echo "showcase training: rc=$? at $(($(date +%s) - START))s" | tee -a "$OUT/stages.txt"
fi
bench proto 120 benchmarks/test_prototype_ops.py -k large
bench step 40 benchmarks/test_scheduler_step.py -k "test_step or test_multistep_step"
bench loops 60 benchmarks/test_scheduler_step.py -k "test_sampling_loop and ddim50"
bench train 80 benchmarks/test_throughput.py -k test_training_variants
bench proto-paper 60 benchmarks/test_prototype_ops.py -k "not large"
echo "finished after $(($(date +%s) - START))s, status $STATUS" | tee -a "$OUT/stages.txt"
if [ "${PACK:-0}" = 1 ]; then
    # archived outside $OUT first: tar fails on a folder that changes while it reads it
    archive=$(mktemp --suffix=.tgz)
    tar -czf "$archive" -C "$OUT" --exclude='run-*.tgz' . &&
        find "$OUT" -maxdepth 1 -type f ! -name 'run-*.tgz' -delete &&
        mv "$archive" "$OUT/gpu-check.tgz"
fi
exit $STATUS
