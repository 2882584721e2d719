#!/bin/bash
# Queues a sharded `reward-lens score` on SLURM: the shard array, then the merge job, which
# starts when every shard succeeded.
#   MODEL=/models/rm PAIRS=/data/big.jsonl WORK=/scratch/rl-run examples/slurm/submit.sh
# Shards: the --array line of shard.sbatch (0-7: N = 8). Progress: reward-lens status $WORK/shards
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${MODEL:?set MODEL}" "${PAIRS:?set PAIRS}" "${WORK:?set WORK}"
export MODEL PAIRS WORK REWARD_LENS=${REWARD_LENS:-reward-lens}
mkdir -p "$WORK/logs"
array=$(sbatch --parsable --export=ALL --chdir="$WORK" "$here/shard.sbatch")
sbatch --export=ALL --chdir="$WORK" --dependency="afterok:${array%%;*}" "$here/merge.sbatch"
