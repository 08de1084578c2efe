#!/bin/bash
# One progressive-distillation stage (pipeline.distill): the student of stage K has half the sampling steps
# of stage K-1 (stage 0 = the training run). Chain the stages with dependencies.
#
#   sbatch slurm/distill.sh 1                                 # stage 1 on 2 nodes x 4 GPUs, configs/ds3.yaml
#   STAGE=2 sbatch --dependency=afterok:<stage-1 job id> slurm/distill.sh
#   j=$(sbatch --parsable slurm/train_ds3.sh)
#   for k in 1 2 3; do j=$(sbatch --parsable --dependency=afterok:$j slurm/distill.sh $k); done
#   sbatch slurm/distill.sh 1 --set distill.max_steps=2000    # further args go to pipeline.distill
#
# Time limit and requeue as in train_ds3.sh (see slurm/env.sh). Log: slurm-<job name>-<job id>.out.
#SBATCH --job-name=calo-distill
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
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

if [ -z "${STAGE:-}" ] && [[ ${1:-} =~ ^[0-9]+$ ]]; then
  STAGE=$1
  shift
fi
[[ ${STAGE:-} =~ ^[0-9]+$ ]] || { echo "distill.sh: give the stage number as the first argument or STAGE=K" >&2; exit 2; }
export STAGE
run_requeueable "${SRUN[@]}" "$PYTHON" -m pipeline.distill --config "$CONFIG" --stage "$STAGE" "${CALO_OVERRIDES[@]}" \
  "${TIME_LIMIT_ARGS[@]}" "$@"
