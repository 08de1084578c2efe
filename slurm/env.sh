# shellcheck shell=bash disable=SC2034  # (variables defined here are used by the scripts that source it)
# Shared helper of the slurm/ scripts: sourced (never run) as the first thing they do.
#
# Environment it reads (all optional; pass them with `sbatch --export=ALL,NAME=value` or export them before sbatch):
#   CALO_REPO          the repository, if the scripts cannot find slurm/env.sh themselves (see below)
#   CALO_SETUP         a shell file sourced first, for `module load ...`, conda, site settings; when set, no venv
#                      is activated (activate one yourself in that file)
#   CALO_VENV          virtual environment to use (default: <repo>/.venv when it exists)
#   CALO_PYTHON        the interpreter (default: the venv's python, else python on PATH)
#   CONFIG             YAML config (default per script, relative paths from the repository root)
#   CALO_SET           space-separated config overrides "train.lr=2e-4 run.dir=/scratch/x" (no spaces in values)
#   CALO_SRUN_ARGS     extra srun options for the job step, e.g. "--gpu-bind=closest" (after the defaults, so
#                      "--kill-on-bad-exit=0" undoes that default)
#   CALO_MAX_REQUEUES  stop requeueing after this many restarts (default 20)
#   CALO_TIME_MARGIN   seconds kept free before the job's time limit for the last checkpoint (default 180)
#   CALO_STATE_DIR     a directory every node can write, for the requeue markers (default <repo>/.slurm-state)
#
# It exports PYTHON, CONFIG, OVERRIDES (the "--set K=V ..." words; the array CALO_OVERRIDES keeps them exact),
# OMP_NUM_THREADS (= SLURM_CPUS_PER_TASK), and defines SRUN (srun with this job's CPUs per task),
# TIME_LIMIT_ARGS and run_requeueable.
#
# Signals and requeue. The scripts ask for `#SBATCH --signal=USR1@300`: WITHOUT the "B:" prefix, so Slurm
# sends SIGUSR1 300 s (up to 360 s) before the time limit straight to the processes of the running job
# steps, i.e. to every task of the `srun python -m ...` step; the stage then writes a checkpoint and exits
# 75 (EX_TEMPFAIL) with a REQUEUE marker. `scancel --signal=USR1 JOBID` does the same by hand. The batch
# shell is not signalled in that design; in case it is (`--signal=B:USR1@300`, or `scancel --batch` or
# `--full`), run_requeueable traps SIGUSR1 and forwards it to srun, which passes it on to the tasks, so
# both designs work. When the step exits 75, run_requeueable runs `scontrol requeue $SLURM_JOB_ID`: the job
# goes back to the queue with the same id (log appended thanks to --open-mode=append) and the re-run
# resumes from the checkpoint. A SIGTERM to the batch shell (scancel, preemption, the time limit itself)
# means "stop": the step's exit code is passed on and nothing is requeued (Slurm requeues preempted jobs
# itself where the site configures it). pipeline.launch's jobs give SIGTERM the same meaning.
#
# A dead rank ends the job step at once: srun runs with --kill-on-bad-exit=1, so when one task exits non-zero
# (a crash, or 75 after stopping) srun kills the others instead of leaving them in a collective until its
# timeout (train.collective_timeout_minutes). srun's exit code then describes the killed tasks, not the
# stop, so the requeue decision reads a marker instead: a stage that exits 75 first writes
# $CALO_REQUEUE_MARKER (one file per job in $CALO_STATE_DIR, default <repo>/.slurm-state/: every node sees it).

# The repository is the parent of the directory this file is in. The scripts locate this file with one line:
# sbatch runs a spool copy of a script, so its $0 says nothing; `scontrol show job` names the script that was
# submitted; CALO_REPO overrides both; `bash slurm/<script>.sh` (e.g. inside salloc) finds it beside $0.
CALO_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd) || exit 2
export CALO_REPO
cd "$CALO_REPO" || exit 2

calo_log() { echo "[$(date '+%F %T')] ${SLURM_JOB_ID:+job $SLURM_JOB_ID${SLURM_RESTART_COUNT:+ (restart $SLURM_RESTART_COUNT)}: }$*"; }

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

calo_time_left() {  # seconds left in this job (squeue %L), or nothing when unlimited or unknown
  [ -n "${SLURM_JOB_ID:-}" ] || return 0
  local left d=0 h=0 m=0 s=0
  left=$(squeue -h -j "$SLURM_JOB_ID" -o %L 2>/dev/null | head -n1)
  [[ $left =~ ^(([0-9]+)-)?(([0-9]+):)?([0-9]+):([0-9]+)$ ]] || return 0
  d=${BASH_REMATCH[2]:-0} h=${BASH_REMATCH[4]:-0} m=${BASH_REMATCH[5]} s=${BASH_REMATCH[6]}
  echo $(((10#$d * 24 + 10#$h) * 3600 + 10#$m * 60 + 10#$s))
}

# TIME_LIMIT_ARGS: "--time-limit SECONDS" for stages that accept it: the job's remaining time less
# CALO_TIME_MARGIN (default 180 s) for the checkpoint; empty when the job has no time limit. A second line
# of defence besides the SIGUSR1 warning (which a site may not deliver, e.g. when --signal is overridden).
TIME_LIMIT_ARGS=()
_calo_left=$(calo_time_left)
if [ -n "$_calo_left" ]; then
  TIME_LIMIT_ARGS=(--time-limit "$((_calo_left - ${CALO_TIME_MARGIN:-180} > 60 ? _calo_left - ${CALO_TIME_MARGIN:-180} : 60))")
fi
unset _calo_left

_calo_forward() {  # trap handler: pass a signal the batch shell received on to the running step
  _calo_signal=$1
  calo_log "batch shell received SIG$1; forwarding it to the job step (srun pid ${_calo_step:-none})"
  [ -n "${_calo_step:-}" ] && kill -s "$1" "$_calo_step" 2>/dev/null
}

# run_requeueable CMD...: run the job step CMD (normally "${SRUN[@]}" python -m ...) and exit with its code,
# except that a stop (exit code 75, or the requeue marker a task left: the stage saved its state and wants to
# continue) requeues this job and exits 0.
export CALO_REQUEUE_MARKER="${CALO_STATE_DIR:-$CALO_REPO/.slurm-state}/requeue.${SLURM_JOB_ID:-pid$$}"
run_requeueable() {
  local rc
  _calo_signal=
  _calo_step=
  rm -f "$CALO_REQUEUE_MARKER"
  trap '_calo_forward USR1' USR1
  trap '_calo_forward TERM' TERM
  calo_log "running: $*"
  "$@" &  # in the background: bash runs traps only between commands, and `wait` returns on a signal
  _calo_step=$!
  while :; do
    wait "$_calo_step"
    rc=$?
    kill -0 "$_calo_step" 2>/dev/null || break  # still running: wait was interrupted by a trapped signal
  done
  trap - USR1 TERM
  calo_log "job step exited with code $rc"
  if [ -f "$CALO_REQUEUE_MARKER" ]; then
    calo_log "a task stopped resumably: $(cat "$CALO_REQUEUE_MARKER")"
    rm -f "$CALO_REQUEUE_MARKER"
    rc=75
  fi
  if [ "$rc" -eq 75 ]; then
    if [ "$_calo_signal" = TERM ]; then
      calo_log "stopped by SIGTERM (cancelled, preempted or out of time): not requeueing; resubmit to resume"
    elif [ -z "${SLURM_JOB_ID:-}" ]; then
      calo_log "stopped early and not in a batch job: run the same command again to resume"
    elif [ "${SLURM_RESTART_COUNT:-0}" -ge "${CALO_MAX_REQUEUES:-20}" ]; then
      calo_log "already restarted ${SLURM_RESTART_COUNT} times (CALO_MAX_REQUEUES=${CALO_MAX_REQUEUES:-20}): not requeueing"
    elif scontrol requeue "$SLURM_JOB_ID"; then
      calo_log "stopped early (exit 75, checkpoint written): job requeued; it resumes when it runs again"
      exit 0
    else
      calo_log "scontrol requeue failed (job submitted with --no-requeue?); resubmit to resume"
    fi
  fi
  exit "$rc"
}
