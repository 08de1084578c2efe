#!/bin/bash
# Convert CaloChallenge HDF5 files into the zarr store (data_tools.convert), MPI-parallel over whole shards.
# Inputs, geometry, store, layout and split come from the config's `data` section; with `data.standin` set,
# missing inputs are simulated first. Re-running resumes (finished shards are skipped).
#
#   sbatch slurm/convert.sh                                   # 16 MPI ranks on one node, configs/ds3.yaml
#   sbatch --nodes=2 --ntasks-per-node=32 slurm/convert.sh    # more ranks: each writes whole shards
#   CONFIG=configs/smoke.yaml CALO_SET="data.store=/scratch/$USER/smoke.zarr" sbatch --ntasks-per-node=2 slurm/convert.sh
#   sbatch slurm/convert.sh --overwrite                       # extra args go to data_tools.convert
#
# srun needs --mpi=pmi2 here: without it every task would be a rank 0 of 1 (set CALO_MPI=pmix for an MPI
# built against PMIx). Log: slurm-<job name>-<job id>.out in the submit directory.
#SBATCH --job-name=calo-convert
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=16
#SBATCH --cpus-per-task=2
#SBATCH --time=1:00:00
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

run_requeueable "${SRUN[@]}" --mpi="${CALO_MPI:-pmi2}" "$PYTHON" -m data_tools.convert --config "$CONFIG" "${CALO_OVERRIDES[@]}" "$@"
