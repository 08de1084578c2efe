#!/bin/bash
# Export a generated zarr sample as a CaloChallenge HDF5 file (data_tools.export). Sample and output paths
# come from the config's `generate` section; CPU only.
#
#   sbatch slurm/export.sh                                    # configs/ds3.yaml
#   sbatch --dependency=afterok:<generate job id> slurm/export.sh
#   sbatch slurm/export.sh runs/ds3/samples/generated.zarr --out /scratch/$USER/gen.hdf5   # explicit paths
#
# Log: slurm-<job name>-<job id>.out in the submit directory.
#SBATCH --job-name=calo-export
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
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

run_requeueable "${SRUN[@]}" "$PYTHON" -m data_tools.export --config "$CONFIG" "${CALO_OVERRIDES[@]}" "$@"
