#!/usr/bin/env bash
# Wall time of one run against N shard processes started together and their merge (README,
# "Running at scale"): `faithfulness` (per-pair patching, AtP and DLA) and `audit --max-pairs 0`
# on the example pairs repeated 40 times (800 pairs), on the test fixtures' Llama. Median of 3.
#   scripts/shard-timing.sh [target/release/reward-lens] [N]
# Prints one line per setting. Every process gets RAYON_NUM_THREADS=1 unless the line says not.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-target/release/reward-lens}
N=${2:-2}
M=tests/fixtures/models/llama
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
python3 - "$T/big.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open("examples/pairs.jsonl")]
with open(sys.argv[1], "w") as f:
    for r in range(40):
        for x in rows:
            f.write(json.dumps({**x, "id": f"{r}-{x.get('id')}"}) + "\n")
EOF
median() { sort -n | sed -n 2p; }
now() { date +%s.%N; }
time_of() { local s; s=$(now); "$@" >/dev/null 2>&1; printf "%.2f\n" "$(echo "$(now) - $s" | bc)"; }
for cmd in faithfulness audit; do
    args=("$cmd" --model "$M" --pairs "$T/big.jsonl")
    [ "$cmd" = audit ] && args+=(--max-pairs 0)
    ext=.jsonl
    [ "$cmd" = audit ] && ext=""
    one=$(for i in 1 2 3; do RAYON_NUM_THREADS=1 time_of "$B" "${args[@]}" --out "$T/one$ext"; done | median)
    two_threads=$(for i in 1 2 3; do RAYON_NUM_THREADS=2 time_of "$B" "${args[@]}" --out "$T/one$ext"; done | median)
    shards=$(for i in 1 2 3; do
        rm -rf "$T/s"; mkdir -p "$T/s"
        s=$(now)
        for k in $(seq 0 $((N - 1))); do
            RAYON_NUM_THREADS=1 "$B" "${args[@]}" --shard "$k/$N" --out "$T/s/p$k$ext" >/dev/null 2>&1 &
        done
        wait
        "$B" merge --out "$T/merged$ext" "$T/s" >/dev/null 2>&1
        printf "%.2f\n" "$(echo "$(now) - $s" | bc)"
    done | median)
    echo "$cmd, 800 pairs: one process ${one} s; one process with 2 threads ${two_threads} s; $N shard processes + merge ${shards} s"
done
echo "load average while measuring: $(cut -d' ' -f1-3 /proc/loadavg)"
