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
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

# Find the repository (sbatch runs a copy of this script from its spool directory).
for CALO_REPO in "${CALO_REPO:-}" "$(dirname "$0")/.." \
    "$(scontrol show job "${SLURM_JOB_ID:-none}" 2>/dev/null | sed -n 's|^ *Command=\(.*\)/slurm/[^/ ]*\.sh\( .*\)*$|\1|p' | head -n1)" \
    "${SLURM_SUBMIT_DIR:-}" "${SLURM_SUBMIT_DIR:-}/.."; do
  [ -n "$CALO_REPO" ] && [ -f "$CALO_REPO/slurm/env.sh" ] && break
done
[ -f "$CALO_REPO/slurm/env.sh" ] || { echo "cannot find the repository: set CALO_REPO" >&2; exit 2; }
CALO_DEFAULT_CONFIG=configs/ds3.yaml
source "$CALO_REPO/slurm/env.sh"

run_requeueable "${SRUN[@]}" "$PYTHON" -m data_tools.export --config "$CONFIG" "${CALO_OVERRIDES[@]}" "$@"
