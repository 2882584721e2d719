#!/usr/bin/env bash
# The GPU checks in one go, for a person (or a lent machine) with an NVIDIA GPU.
#
#   scripts/gpu-check.sh --prepare   # on the build machine (Rust, no GPU needed): builds the CUDA
#                                    # binary (scripts/build-cuda.sh) and the GPU test program, and
#                                    # puts both under dist/gpu-check/ (carry it with the repo)
#   scripts/gpu-check.sh             # on the GPU machine (no Rust needed), from the repository root
#
# On the GPU machine it runs, writing everything to $OUT (default gpu-check-out/):
#   1. the GPU tests (crates/cli/tests/cuda.rs): every fixture architecture's scores on cuda against
#      the cpu (f32, ≤ 1e-4) and every instrument's output on cuda against the cpu;
#   2. `bench --device cuda --dtype bf16` on a generated Llama with the 8B widths (d 4096, 32/8 heads,
#      d_mlp 14336, vocab 128256; GPU_CHECK_LAYERS layers, 32 for the full 8B): tokens/s and the
#      fraction of this GPU's own measured bf16 matmul rate, with the GPU's peak memory sampled
#      by nvidia-smi against the weights;
#   3. `bench --stages` on the same model: each stage of one forward pass (norm + projections,
#      RoPE, attention scores and softmax, pattern × values, the MLP's parts, residual adds), with
#      the GFLOP/s of the matmul stages: where the GPU's time goes;
#   4. `bench --patch` on cuda: the sublayer patch sweep (naive, sweep, attribution patching) on the
#      32-layer 8B shape, beside the Python peer's recorded time;
#   5. where torch and transformers are installed: the same model scored by transformers (sdpa,
#      bf16) side by side, and both scoring the same text pairs in f32 (parity).
# Nothing is downloaded: the model is generated from a seed.
set -uo pipefail
cd "$(dirname "$0")/.."
CAP="${CUDA_COMPUTE_CAP:-90}"
PKG="dist/gpu-check"

if [ "${1:-}" = "--prepare" ]; then
    set -e
    scripts/build-cuda.sh --caps "$CAP" --tests
    mkdir -p "$PKG"
    rm -rf "$PKG/reward-lens-cuda" "$PKG/reward-lens-cuda.tar.xz"
    # Packed (9 MiB rather than 64): small enough to carry to a lent machine with the repository.
    cp "dist/reward-lens-cuda-sm$CAP.tar.xz" "$PKG/reward-lens-cuda.tar.xz"
    # Built with the cuda feature (its in-process tests open the GPU through the engine), which
    # embeds candle's PTX: 51 MiB, 7 packed, so the folder stays well inside what a lent machine
    # is carried.
    rm -f "$PKG/cuda-tests" "$PKG/cuda-tests.xz"
    xz -T0 -c "dist/cuda-tests-sm$CAP" >"$PKG/cuda-tests.xz"
    du -sh "$PKG"/*
    echo "carry $PKG with the repository; on the GPU machine run scripts/gpu-check.sh"
    exit 0
fi

OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
# GPU_CHECK_DRY_RUN=1 runs every step but the GPU tests on the CPU, with this build's binary
# (REWARD_LENS_BIN) and a tiny model: how the script is kept working without a GPU (a CLI test
# runs it so).
DRY="${GPU_CHECK_DRY_RUN:-0}"
if [ "$DRY" = 1 ]; then
    BIN="${REWARD_LENS_BIN:-$PWD/target/release/reward-lens}"
    DEVICE=cpu
    # The vocabulary covers the example tokenizer's 1031 ids, which --save-model writes.
    WIDTHS=(--d-model 64 --heads 4 --kv-heads 2 --d-mlp 96 --vocab 1100)
    LAYERS=2 SEQ=16 BATCHES=1,2 STAGE_BATCH=2 SWEEP_LAYERS=2 SWEEP_PAIRS=1
else
    BIN="$PWD/$PKG/reward-lens-cuda/run"
    if [ ! -x "$BIN" ] && [ -f "$PKG/reward-lens-cuda.tar.xz" ]; then
        mkdir -p "$PKG/reward-lens-cuda"
        tar -C "$PKG/reward-lens-cuda" --strip-components=1 -xJf "$PKG/reward-lens-cuda.tar.xz"
    fi
    if [ ! -x "$PKG/cuda-tests" ] && [ -f "$PKG/cuda-tests.xz" ]; then
        xz -dc "$PKG/cuda-tests.xz" >"$PKG/cuda-tests" && chmod +x "$PKG/cuda-tests"
    fi
    DEVICE=cuda
    WIDTHS=(--d-model 4096 --heads 32 --kv-heads 8 --d-mlp 14336 --vocab 128256)
    LAYERS="${GPU_CHECK_LAYERS:-4}"
    SEQ="${GPU_CHECK_SEQ_LEN:-256}"
    BATCHES="${GPU_CHECK_BATCHES:-1,8,16,32}"
    STAGE_BATCH="${GPU_CHECK_STAGE_BATCH:-16}"
    SWEEP_LAYERS="${GPU_CHECK_SWEEP_LAYERS:-32}"
    SWEEP_PAIRS="${GPU_CHECK_SWEEP_PAIRS:-4}"
fi
[ -x "$BIN" ] || { echo "gpu-check.sh: $BIN missing: run scripts/gpu-check.sh --prepare on the build machine" >&2; exit 2; }
failed=0
step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)" | tee -a "$OUT/summary.md"; }
: >"$OUT/summary.md"

step "GPU"
if [ "$DRY" = 1 ]; then
    echo "dry run on the cpu: no GPU, GPU tests skipped" | tee -a "$OUT/summary.md"
else
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee -a "$OUT/summary.md"
fi
"$BIN" --version | tee -a "$OUT/summary.md"

[ "$DRY" = 1 ] || step "GPU tests: cuda against cpu on every architecture and instrument"
if [ "$DRY" = 1 ]; then
    :
elif CUDA_LIBS="$(python3 -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13", "lib"))' 2>/dev/null)"
    # The test program links the CUDA libraries as the binary does; `run` finds them the same way.
    LD_LIBRARY_PATH="$PKG/reward-lens-cuda/lib${CUDA_LIBS:+:$CUDA_LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    REWARD_LENS_CUDA_TESTS=1 REWARD_LENS_BIN="$BIN" REWARD_LENS_REPO="$PWD" REWARD_LENS_TEST_TMP="$OUT/tests" \
    RUST_TEST_THREADS=1 "$PKG/cuda-tests" --nocapture >"$OUT/tests.log" 2>&1; then
    echo "passed" | tee -a "$OUT/summary.md"
else
    echo "FAILED (see $OUT/tests.log)" | tee -a "$OUT/summary.md"
    failed=1
fi
[ "$DRY" = 1 ] || grep -E "max \|Δ\|" "$OUT/tests.log" | tee -a "$OUT/summary.md"

# Peak GPU memory of a command: nvidia-smi's used-memory counter sampled every 50 ms, minus what
# was in use before it started.
peak_of() {
    local log="$1"; shift
    if [ "$DRY" = 1 ]; then
        echo n/a >"$log.peak_mib"
        "$@" >"$log" 2>"$log.err"
        return
    fi
    local base; base="$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0)"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 50 >"$log.mem" &
    local sampler=$!
    "$@" >"$log" 2>"$log.err"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    echo "$(( $(sort -n "$log.mem" | tail -1) - base ))" >"$log.peak_mib"
    return $rc
}

SHAPE=(--layers "$LAYERS" "${WIDTHS[@]}" --seq-len "$SEQ")
step "bench --device $DEVICE --dtype bf16 ($LAYERS layers, ${WIDTHS[*]}, $SEQ tokens, batches $BATCHES)"
if peak_of "$OUT/bench.json" "$BIN" bench "${SHAPE[@]}" --batch-sizes "$BATCHES" --device "$DEVICE" --dtype bf16 --no-memory --json; then
    python3 - "$OUT/bench.json" "$(cat "$OUT/bench.json.peak_mib")" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
r = json.load(open(sys.argv[1])); peak = sys.argv[2]
weights_mib = r["n_params"] * 2 / 2**20
print(f"{r['shape']}: {r['n_params']/1e9:.2f} B parameters; bf16 matmul rate {r['matmul_gflops']/1e3:.0f} TFLOP/s")
for s in r["speed"]:
    print(f"  batch {s['batch']} x {s['seq_len']}: {s['tokens_per_s']:.0f} tokens/s, {s['gflops']/1e3:.0f} TFLOP/s = {100*s['fraction_of_matmul']:.0f} % of matmul")
if peak == "n/a":
    print(f"  peak GPU memory: not sampled (no GPU); bf16 weights {weights_mib:.1f} MiB")
else:
    print(f"  peak GPU memory {float(peak):.0f} MiB = {float(peak)/weights_mib:.2f} x the bf16 weights ({weights_mib:.0f} MiB)")
EOF
else
    echo "FAILED: $(tail -3 "$OUT/bench.json.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

LONG="${GPU_CHECK_LONG:-2048}"
[ "$DRY" = 1 ] && LONG=64
step "long sequences: bf16 scoring of batch 8 x $LONG tokens, peak GPU memory (attention scores in query blocks)"
if peak_of "$OUT/long.json" "$BIN" bench --layers "$LAYERS" "${WIDTHS[@]}" --seq-len "$LONG" --batch-sizes 8 --iters 1 \
    --device "$DEVICE" --dtype bf16 --no-memory --json; then
    python3 - "$OUT/long.json" "$(cat "$OUT/long.json.peak_mib")" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
r = json.load(open(sys.argv[1])); peak = sys.argv[2]
weights_mib = r["n_params"] * 2 / 2**20
s = r["speed"][0]
print(f"  batch {s['batch']} x {s['seq_len']}: {s['tokens_per_s']:.0f} tokens/s = {100*s['fraction_of_matmul']:.0f} % of matmul")
if peak != "n/a":
    print(f"  peak GPU memory {float(peak):.0f} MiB = {float(peak)/weights_mib:.2f} x the bf16 weights ({weights_mib:.0f} MiB)")
EOF
else
    echo "FAILED: $(tail -3 "$OUT/long.json.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

step "where the time goes: each stage of one bf16 forward pass (batch $STAGE_BATCH)"
if "$BIN" bench "${SHAPE[@]}" --batch-sizes "$STAGE_BATCH" --device "$DEVICE" --dtype bf16 --stages --json \
    >"$OUT/stages.json" 2>"$OUT/stages.err"; then
    python3 - "$OUT/stages.json" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
r = json.load(open(sys.argv[1]))
print(f"plain forward {1e3*r['plain_seconds']:.1f} ms, staged {1e3*r['staged_seconds']:.1f} ms; |Δ score| {r['scores_max_abs_diff']:.2g}")
for s in r["stages"]:
    rate = f", {s['gflops']/1e3:.0f} TFLOP/s = {100*s['fraction_of_matmul']:.0f} % of matmul" if s["gflops"] else ""
    print(f"  {s['stage']}: {1e3*s['seconds']:.2f} ms ({100*s['share']:.1f} %){rate}")
EOF
else
    echo "FAILED: $(tail -3 "$OUT/stages.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

step "the two CUDA kernels (softmax, silu · up) against candle's ops (REWARD_LENS_CUDA_KERNELS=candle), batch $STAGE_BATCH"
if REWARD_LENS_CUDA_KERNELS=candle "$BIN" bench "${SHAPE[@]}" --batch-sizes "$STAGE_BATCH" --device "$DEVICE" --dtype bf16 \
    --stages --json >"$OUT/stages-composed.json" 2>"$OUT/stages-composed.err" && [ -s "$OUT/stages.json" ]; then
    python3 - "$OUT/stages.json" "$OUT/stages-composed.json" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
kernel, composed = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for prefix in ("scores", "silu"):
    stage = lambda r: next(s for s in r["stages"] if s["stage"].startswith(prefix))
    k, c = stage(kernel)["seconds"], stage(composed)["seconds"]
    print(f"  {stage(kernel)['stage']}: kernel {1e3*k:.2f} ms, candle's ops {1e3*c:.2f} ms ({c/k:.2f} x)")
print(f"  plain forward: kernels {1e3*kernel['plain_seconds']:.1f} ms, candle's ops {1e3*composed['plain_seconds']:.1f} ms "
      f"({composed['plain_seconds']/kernel['plain_seconds']:.2f} x)")
EOF
else
    echo "FAILED: $(tail -3 "$OUT/stages-composed.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

step "batches by length against input order: 64 pairs of spread lengths, bf16, batch $STAGE_BATCH"
if "$BIN" bench "${SHAPE[@]}" --batch-sizes "$STAGE_BATCH" --device "$DEVICE" --dtype bf16 --lengths --iters 1 --json \
    >"$OUT/lengths.json" 2>"$OUT/lengths.err"; then
    python3 - "$OUT/lengths.json" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    print(f"  {row['order']}: {row['seconds']:.2f} s, {row['tokens_per_s']:.0f} tokens/s, {100*row['padding']:.0f} % padding")
print(f"  by length {r['rows'][0]['seconds']/r['rows'][1]['seconds']:.2f} x input order; rewards agree to {r['max_rel_diff']:.1e} of the largest")
EOF
else
    echo "FAILED: $(tail -3 "$OUT/lengths.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

step "patch sweep on $DEVICE, bf16 ($SWEEP_LAYERS layers, ${WIDTHS[*]}, $SWEEP_PAIRS pairs of 40–60 tokens)"
if "$BIN" bench --patch --patch-pairs "$SWEEP_PAIRS" --iters 1 --device "$DEVICE" --dtype bf16 \
    --layers "$SWEEP_LAYERS" "${WIDTHS[@]}" >"$OUT/sweep.md" 2>"$OUT/sweep.err"; then
    tee -a "$OUT/summary.md" <"$OUT/sweep.md"
    echo "(reward-lens 1.0, the Python peer, needed 1.83 s per pair for this sweep on an H200 with the 32-layer 8B model and the audit's pairs)" |
        tee -a "$OUT/summary.md"
else
    echo "FAILED: $(tail -3 "$OUT/sweep.err")" | tee -a "$OUT/summary.md"
    failed=1
fi

if python3 -c 'import torch, transformers' 2>/dev/null; then
    MODEL="$OUT/model-8b-shape"
    step "transformers side by side on the same generated model"
    "$BIN" bench "${SHAPE[@]}" --save-model "$MODEL" 2>>"$OUT/summary.md" || failed=1
    if peak_of "$OUT/transformers.json" python3 scripts/bench_transformers.py "$MODEL" --device "$DEVICE" --dtype bf16 \
        --seq-len "$SEQ" --batch-sizes "$BATCHES"; then
        python3 - "$OUT/bench.json" "$OUT/transformers.json" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
print(f"transformers {theirs['transformers']} (torch {theirs['torch']}, {theirs['attn']}), bf16:")
for o, t in zip(ours["speed"], theirs["speed"]):
    print(f"  batch {o['batch']}: reward-lens {o['tokens_per_s']:.0f} tokens/s, transformers {t['tokens_per_s']:.0f}: {o['tokens_per_s']/t['tokens_per_s']:.2f} x")
EOF
    else
        echo "transformers bench FAILED: $(tail -3 "$OUT/transformers.json.err")" | tee -a "$OUT/summary.md"
        failed=1
    fi
    if [ -s "$OUT/lengths.json" ]; then
        step "transformers on the same 64 pairs of spread lengths, bf16, batch $STAGE_BATCH"
        if python3 scripts/bench_transformers.py "$MODEL" --device "$DEVICE" --dtype bf16 --iters 1 \
            --pair-lengths "$OUT/lengths.json" >"$OUT/transformers-lengths.json" 2>"$OUT/transformers-lengths.err"; then
            python3 - "$OUT/lengths.json" "$OUT/transformers-lengths.json" <<'EOF' | tee -a "$OUT/summary.md"
import json, sys
ours, theirs = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
for r in ours["rows"]:
    print(f"  reward-lens, {r['order']}: {r['tokens_per_s']:.0f} tokens/s ({100*r['padding']:.0f} % padding)")
for r in theirs["orders"]:
    print(f"  transformers, {r['order']}: {r['tokens_per_s']:.0f} tokens/s ({100*r['padding']:.0f} % padding)")
best = max(r["tokens_per_s"] for r in theirs["orders"])
print(f"  reward-lens by length: {ours['rows'][1]['tokens_per_s']/theirs['orders'][0]['tokens_per_s']:.2f} x transformers in input order, "
      f"{ours['rows'][1]['tokens_per_s']/best:.2f} x its faster order")
EOF
        else
            echo "transformers lengths bench FAILED: $(tail -3 "$OUT/transformers-lengths.err")" | tee -a "$OUT/summary.md"
            failed=1
        fi
    fi
    step "parity: f32 scores of the same pairs, reward-lens $DEVICE against transformers $DEVICE"
    if "$BIN" score --model "$MODEL" --pairs tests/fixtures/pairs.jsonl --device "$DEVICE" --dtype f32 \
        --out "$OUT/scores.jsonl" 2>"$OUT/scores.err"; then
        python3 scripts/check_transformers.py "$MODEL" tests/fixtures/pairs.jsonl "$OUT/scores.jsonl" "$DEVICE" \
            2>"$OUT/check.err" | tee -a "$OUT/summary.md"
        [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAILED: $(tail -3 "$OUT/check.err")" | tee -a "$OUT/summary.md"; failed=1; }
    else
        echo "FAILED: $(tail -3 "$OUT/scores.err")" | tee -a "$OUT/summary.md"
        failed=1
    fi
    rm -rf "$MODEL"
else
    step "transformers: not installed here, side-by-side skipped"
fi

step "done: $([ $failed = 0 ] && echo all checks passed || echo SOME CHECKS FAILED)"
exit $failed
