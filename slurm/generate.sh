#!/bin/bash
# Mass generation (pipeline.generate) into a zarr sample, in seed blocks; re-running skips finished blocks
# and the rank that sees every block done writes the manifest. Two ways to spread it over GPUs:
#
#   sbatch slurm/generate.sh                                  # one step: 4 nodes x 4 GPUs, srun ranks
#   sbatch --nodes=8 slurm/generate.sh --n 1000000            # extra args go to pipeline.generate
#   sbatch --array=0-31 --nodes=1 --ntasks-per-node=1 --gpus-per-node=1 slurm/generate.sh
#                                                             # job array: element i is rank i of 32
#   sbatch --nodes=1 --ntasks-per-node=1 --gpus-per-node=0 slurm/generate.sh --finalize
#                                                             # only check the blocks and write the manifest
#   CALO_SET="generate.model=stage_3" sbatch slurm/generate.sh
#
# A job array needs one task per element (the element's index is the rank, the array size the world size;
# use a contiguous range such as 0-31). SIGUSR1 before the time limit makes it stop after the current batch
# and exit 75; the job (or array element) then requeues itself (see slurm/env.sh).
#SBATCH --job-name=calo-generate
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=4:00:00
#SBATCH --signal=USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

CALO_DEFAULT_CONFIG=configs/ds3.yaml
# sbatch runs a spool copy of this script: find the repository through the script path SLURM recorded,
# else $CALO_REPO, else beside $0 (`bash slurm/<script>.sh` inside salloc). tests/test_slurm_scripts.py
# checks that every script has these same three lines.
_job_script=$(scontrol show job "${SLURM_JOB_ID:-0}" 2>/dev/null | sed -n 's|^ *Command=\(.*/slurm/[^/ ]*\.sh\).*|\1|p' | head -n1)
source "${CALO_REPO:-$(dirname "${_job_script:-$0}")/..}/slurm/env.sh" || exit 2

RANK_ARGS=()
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  _first=${SLURM_ARRAY_TASK_MIN:-0}
  _world=$((SLURM_ARRAY_TASK_MAX - _first + 1))
  if [ "${SLURM_NTASKS:-1}" -ne 1 ]; then
    echo "generate.sh: a job array needs one task per element (--nodes=1 --ntasks-per-node=1), got ${SLURM_NTASKS}" >&2
    exit 2
  fi
  if [ "$_world" -ne "${SLURM_ARRAY_TASK_COUNT:-$_world}" ]; then
    echo "generate.sh: the array must be a contiguous range (e.g. --array=0-31), got ${SLURM_ARRAY_TASK_COUNT} elements in $_first-$SLURM_ARRAY_TASK_MAX" >&2
    exit 2
  fi
  RANK_ARGS=(--rank "$((SLURM_ARRAY_TASK_ID - _first))" --world-size "$_world")
fi
run_requeueable "${SRUN[@]}" "$PYTHON" -m pipeline.generate --config "$CONFIG" "${CALO_OVERRIDES[@]}" "${RANK_ARGS[@]}" "$@"
