#!/bin/bash
# Queues a sharded `reward-lens score` on SLURM: the shard array, then the merge job, which
# starts when every shard succeeded.
#   MODEL=/models/rm PAIRS=/data/big.jsonl WORK=/scratch/rl-run examples/slurm/submit.sh
# Shards: SHARDS, else the --array line of shard.sbatch (0-7: N = 8). Progress: reward-lens status $WORK/shards
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${MODEL:?set MODEL}" "${PAIRS:?set PAIRS}" "${WORK:?set WORK}"
export MODEL PAIRS WORK REWARD_LENS=${REWARD_LENS:-reward-lens}
# N, for the tasks and for any rerun of one of them (SHARDS=N sbatch --array=K … shard.sbatch).
export SHARDS=${SHARDS:-$(sed -n 's/^#SBATCH --array=0-\([0-9]*\).*/\1/p' "$here/shard.sbatch" | awk '{print $1 + 1}')}
mkdir -p "$WORK/logs"
array=$(sbatch --parsable --export=ALL --chdir="$WORK" --array="0-$((SHARDS - 1))" "$here/shard.sbatch")
sbatch --export=ALL --chdir="$WORK" --dependency="afterok:${array%%;*}" "$here/merge.sbatch"
