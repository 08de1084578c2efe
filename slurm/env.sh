# shellcheck shell=bash disable=SC2034  # (variables defined here are used by the scripts that source it)
# Shared helper of the slurm/ scripts: sourced (never run) as the first thing they do.
#
# Environment it reads (all optional; pass them with `sbatch --export=ALL,NAME=value` or export them before sbatch):
#   CALO_REPO          the repository, if the scripts cannot find slurm/env.sh themselves (see their headers)
#   CALO_SETUP         a shell file sourced first, for `module load ...`, conda, site settings; when set, no venv
#                      is activated (activate one yourself in that file)
#   CALO_VENV          virtual environment to use (default: <repo>/.venv when it exists)
#   CALO_PYTHON        the interpreter (default: the venv's python, else python on PATH)
#   CONFIG             YAML config (default per script, relative paths from the repository root)
#   CALO_SET           space-separated config overrides "train.lr=2e-4 run.dir=/scratch/x" (no spaces in values)
#   CALO_SRUN_ARGS     extra srun options for the job step, e.g. "--gpu-bind=closest" (after the defaults, so
#                      "--kill-on-bad-exit=0" undoes that default)
#   CALO_MAX_REQUEUES  stop requeueing after this many restarts (default: pipeline/runtime/requeue_policy.py)
#   CALO_TIME_MARGIN   seconds kept free before the job's time limit for the last checkpoint (default: same file)
#   CALO_STATE_DIR     a directory every node can write, for the requeue markers (default <repo>/.slurm-state)
#
# It exports PYTHON, CONFIG, OVERRIDES (the "--set K=V ..." words; the array CALO_OVERRIDES keeps them exact),
# OMP_NUM_THREADS (= SLURM_CPUS_PER_TASK), and defines SRUN (srun with this job's CPUs per task),
# TIME_LIMIT_ARGS and run_requeueable.
#
# Signals and requeue: one policy for sbatch and pipeline.launch alike, written once in
# pipeline/runtime/requeue_policy.py and applied here by pipeline/launch/job_step.py, which run_requeueable
# execs (so the batch shell's signals reach it). The scripts ask for `#SBATCH --signal=USR1@<seconds>` without the
# "B:" prefix: Slurm sends SIGUSR1 before the time limit straight to every task of the job step; the stage
# writes a checkpoint, leaves a requeue marker and exits 75, and the job requeues itself (same job id; the
# log is appended thanks to --open-mode=append). SIGUSR1 sent to the batch shell is forwarded to the step.
# SIGTERM (scancel, preemption, the time limit itself) means "stop": nothing is requeued. srun runs with
# --kill-on-bad-exit=1, so a dead rank ends the step at once instead of leaving the others in a collective.

# The repository is the parent of the directory this file is in (each script finds this file, see its header).
CALO_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
export CALO_REPO
cd "$CALO_REPO" || exit 2

# ---------------------------------------------------------------- software environment
if [ -n "${CALO_SETUP:-}" ]; then
  [ -f "$CALO_SETUP" ] || { echo "slurm/env.sh: CALO_SETUP=$CALO_SETUP is not a file" >&2; exit 2; }
  # shellcheck disable=SC1090
  source "$CALO_SETUP" || { echo "slurm/env.sh: sourcing CALO_SETUP=$CALO_SETUP failed" >&2; exit 2; }
  PYTHON=${CALO_PYTHON:-python}
elif [ -n "${CALO_VENV:-}" ] || [ -x "$CALO_REPO/.venv/bin/python" ]; then
  _venv=${CALO_VENV:-$CALO_REPO/.venv}
  [ -x "$_venv/bin/python" ] || { echo "slurm/env.sh: CALO_VENV=$_venv has no bin/python" >&2; exit 2; }
  # The venv's python is called by its path, as the Makefile and the tests do, and its bin/ goes at the END
  # of PATH: its tools never shadow the system's. That matters for ninja: DeepSpeed JIT-builds a CPU op
  # into a shared cache, and a different ninja version (e.g. the venv's 1.13 vs Debian's 1.11) sees every
  # command as changed and rebuilds it (~90 s) each time the two alternate.
  export VIRTUAL_ENV=$_venv PATH=$PATH:$_venv/bin
  PYTHON=${CALO_PYTHON:-$_venv/bin/python}
  unset PYTHONHOME _venv
else
  PYTHON=${CALO_PYTHON:-python}
fi
command -v "$PYTHON" >/dev/null || { echo "slurm/env.sh: no $PYTHON (set CALO_SETUP or CALO_VENV)" >&2; exit 2; }
export PYTHON

# ---------------------------------------------------------------- config and overrides
export CONFIG=${CONFIG:-${CALO_DEFAULT_CONFIG:-configs/ds3.yaml}}
[ -f "$CONFIG" ] || { echo "slurm/env.sh: CONFIG=$CONFIG not found (relative paths start at $CALO_REPO)" >&2; exit 2; }
CALO_OVERRIDES=()
read -r -a _calo_set <<<"${CALO_SET:-}"  # split on whitespace, no globbing (values like [a,b] stay intact)
for _kv in "${_calo_set[@]}"; do
  CALO_OVERRIDES+=(--set "$_kv")
done
unset _calo_set _kv
export OVERRIDES="${CALO_OVERRIDES[*]}"

# ---------------------------------------------------------------- threads and the job step
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-${OMP_NUM_THREADS:-1}}
export PYTHONUNBUFFERED=1
# Slurm 22.05's srun does not inherit --cpus-per-task from the job: pass it on explicitly.
SRUN=(srun --kill-on-bad-exit=1 ${SLURM_CPUS_PER_TASK:+--cpus-per-task=$SLURM_CPUS_PER_TASK})
read -r -a _calo_srun_args <<<"${CALO_SRUN_ARGS:-}"
SRUN+=("${_calo_srun_args[@]}")
unset _calo_srun_args

# TIME_LIMIT_ARGS: "--time-limit SECONDS" for stages that accept it (the job's remaining time less
# CALO_TIME_MARGIN), empty without a time limit: a second line of defence besides the SIGUSR1 warning.
read -r -a TIME_LIMIT_ARGS <<<"$("$PYTHON" -m pipeline.launch.job_step --time-limit-args)"

# run_requeueable CMD...: run the job step CMD (normally "${SRUN[@]}" python -m ...) under the requeue policy
# and exit with its code (0 after requeueing the job).
run_requeueable() {
  exec "$PYTHON" -m pipeline.launch.job_step -- "$@"
}
