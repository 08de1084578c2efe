#!/bin/bash
# Train the ds3 diffusion model (pipeline.train) with DeepSpeed: one task per GPU, any number of nodes.
#
#   sbatch slurm/train_ds3.sh                                  # 4 nodes x 4 GPUs, configs/ds3.yaml, 24 h
#   sbatch --nodes=2 --time=12:00:00 -p gpu -A myproj slurm/train_ds3.sh
#   CALO_SET="train.lr=2e-4 run.dir=/scratch/$USER/ds3" sbatch slurm/train_ds3.sh
#   CONFIG=configs/ds2.yaml sbatch slurm/train_ds3.sh --max-steps 1000     # extra args go to pipeline.train
#   # CPU only (e.g. the local test cluster): no GPUs, 2 tasks on one node, the smoke config
#   CONFIG=configs/smoke.yaml CALO_SET="run.dir=/tmp/smoke" \
#     sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 slurm/train_ds3.sh
#
# Time limit and requeue: SIGUSR1 300 s before the limit (and --time-limit from the job's remaining time)
# make training checkpoint and exit 75; the job then requeues itself and resumes (see slurm/env.sh).
# Log: slurm-<job name>-<job id>.out in the submit directory, appended across requeues.
#SBATCH --job-name=calo-train
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
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

run_requeueable "${SRUN[@]}" "$PYTHON" -m pipeline.train --config "$CONFIG" "${CALO_OVERRIDES[@]}" "${TIME_LIMIT_ARGS[@]}" "$@"
