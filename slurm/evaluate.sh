#!/bin/bash
# Evaluate a generated sample against the reference with the CaloChallenge metrics (pipeline.evaluate):
# generated, reference and output paths come from the config; the classifiers use the GPU.
#
#   sbatch slurm/evaluate.sh                                  # configs/ds3.yaml, 1 GPU
#   sbatch --dependency=afterok:<export job id> slurm/evaluate.sh
#   sbatch --gpus-per-node=0 --cpus-per-task=16 slurm/evaluate.sh --device cpu   # extra args go to pipeline.evaluate
#
# Log: slurm-<job name>-<job id>.out in the submit directory.
#SBATCH --job-name=calo-evaluate
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gpus-per-node=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=2:00:00
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

run_requeueable "${SRUN[@]}" "$PYTHON" -m pipeline.evaluate --config "$CONFIG" "${CALO_OVERRIDES[@]}" "$@"
