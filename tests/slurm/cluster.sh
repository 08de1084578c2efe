#!/usr/bin/env bash
# A real SLURM cluster on this machine, for the integration tests and for trying the slurm/ scripts: one node
# "localhost" by default, plus N compute nodes in their own network namespaces with --nodes N (nodes.sh).
#
#   bash tests/slurm/cluster.sh up       # install what is missing (Debian packages), start, check; idempotent
#   bash tests/slurm/cluster.sh up --nodes 3   # the same plus node1..node3 (partition "nodes"), see nodes.sh
#   bash tests/slurm/cluster.sh status   # daemons, sinfo; exit 1 unless healthy
#   bash tests/slurm/cluster.sh down     # cancel all jobs, stop every daemon this script started
#   bash tests/slurm/cluster.sh purge    # down, then delete the state directory
#
# Daemons: munged (socket /run/munge/munge.socket.2, where Slurm looks; one already running there is used),
# mariadbd (no networking, socket in the state dir), slurmdbd (so sacct and submitit work),
# slurmctld and slurmd (node "localhost", all CPUs of this machine, no cgroups); with --nodes, one more slurmd
# per compute node (PID file slurmd@nodeK). Everything they write lives
# in one directory, $CALO_SLURM_DIR (default /tmp/calo-slurm): etc/ (configs), log/ (all logs), pids/ (the
# PIDs this script started), state/, spool/, munge/, mysql/.
#
# NOTE: outside the state directory it writes only (besides munged's socket in /run/munge and, with --nodes,
# the namespaces and links listed in net/created)
# /etc/slurm/slurm.conf, as a symlink to $CALO_SLURM_DIR/etc/slurm.conf, so that Debian's client commands
# (sbatch, srun, sinfo, sacct, scontrol) find the cluster without SLURM_CONF. An existing
# /etc/slurm/slurm.conf that this script did not write is never replaced (up fails instead; set
# SLURM_CONF=$CALO_SLURM_DIR/etc/slurm.conf and CALO_SLURM_NO_ETC=1 to run beside it).
#
# Processes are stopped only by the PIDs recorded in pids/ (checked against the expected program name) and,
# for job processes left behind after `down` stopped the daemons, by what ties them to this cluster (see
# leftovers): never by name alone.
set -uo pipefail

DIR=${CALO_SLURM_DIR:-/tmp/calo-slurm}
DIR=$(mkdir -p "$DIR" && cd "$DIR" && pwd) || { echo "cluster.sh: cannot create $DIR" >&2; exit 1; }
CONF=$DIR/etc/slurm.conf
DBDCONF=$DIR/etc/slurmdbd.conf
LOG=$DIR/log
PIDS=$DIR/pids
MUNGE_DIR=$DIR/munge
MUNGE_SOCKET=/run/munge/munge.socket.2   # the default: Slurm's dbd connections ignore AuthInfo=socket=
MYSQL_DIR=$DIR/mysql
MYSQL_SOCKET=$MYSQL_DIR/mysqld.sock
ETC_CONF=/etc/slurm/slurm.conf
CLUSTER=calo
NODE=localhost
DB_PASS=calo-slurm-local   # the database only listens on a socket in the state dir (mode 700)
MARKER="# written by tests/slurm/cluster.sh"
PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; stopped in reverse
export SLURM_CONF=$CONF MYSQL_UNIX_PORT=$MYSQL_SOCKET

say() { echo "cluster.sh: $*"; }
die() { echo "cluster.sh: ERROR: $*" >&2; exit 1; }
t0=$SECONDS
# shellcheck source=tests/slurm/nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/nodes.sh"
NODES=$(node_count)   # compute nodes besides localhost: the recorded count; `up` sets it from --nodes

# ------------------------------------------------------------------ processes
pid_of() { cat "$PIDS/$1" 2>/dev/null; }

alive() {  # alive NAME: the recorded PID runs program NAME (slurmd for slurmd@NODE; a zombie counts as dead)
  local pid stat
  pid=$(pid_of "$1") || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${1%@*}" ]] || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

launch() {  # launch NAME LOGFILE CMD...: start a foreground-mode daemon in its own session, record its PID
  local name=$1 out=$2; shift 2
  say "starting $name: $*"
  CALO_SLURM_INSTANCE=$DIR setsid "$@" </dev/null >>"$out" 2>&1 &
  echo $! >"$PIDS/$name"
}

stop() {  # stop NAME: SIGTERM the recorded PID, SIGKILL after 20 s
  local name=$1 pid i
  if alive "$name"; then
    pid=$(pid_of "$name")
    say "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 40; i++)); do alive "$name" || break; sleep 0.5; done
    if alive "$name"; then say "$name did not stop in 20 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
  fi
  rm -f "$PIDS/$name"
}

leftovers() {  # PIDs of this cluster's job processes left behind (the daemons are stopped by recorded PID)
  # slurmstepd (it overwrites its environment with its title): an fd on one of this cluster's slurmd logs;
  # batch shells and tasks: SLURM_CONF=<this config> and SLURM_JOB_ID in their environment;
  # anything else the daemons spawned: the CALO_SLURM_INSTANCE=<state dir> marker. Never this shell's ancestors.
  local pid env keep=" " p=$$
  while [[ $p =~ ^[0-9]+$ ]] && ((p > 1)); do keep+="$p "; p=$(awk '{print $4}' "/proc/$p/stat" 2>/dev/null); done
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    [[ $keep == *" $pid "* || $pid == "$BASHPID" ]] && continue
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && continue
    env=$({ tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null)
    if grep -qxF "CALO_SLURM_INSTANCE=$DIR" <<<"$env" ||
      { grep -qxF "SLURM_CONF=$CONF" <<<"$env" && grep -q '^SLURM_JOB_ID=' <<<"$env"; }; then
      echo "$pid"
    elif [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == */slurmstepd* ]] &&
      find "/proc/$pid/fd" -lname "$LOG/slurmd-*.log" 2>/dev/null | grep -q .; then
      echo "$pid"
    fi
  done
}

wait_for() {  # wait_for SECONDS DAEMON CMD...: poll CMD while DAEMON runs, at most SECONDS
  local end=$((SECONDS + $1)) name=$2; shift 2
  while ((SECONDS < end)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$name" || { echo "cluster.sh: $name exited" >&2; return 1; }
    sleep 0.5
  done
  echo "cluster.sh: timed out waiting for $name" >&2
  return 1
}

tails() {  # print the last lines of the named logs
  local f
  for f in "$@"; do
    [ -s "$f" ] || continue
    echo "----- tail of $f" >&2
    tail -n 25 "$f" >&2
  done
}

fail() { echo "cluster.sh: ERROR: $1" >&2; shift; tails "$@"; exit 1; }

# ------------------------------------------------------------------ checks (short timeouts: never hang)
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
mysql_root() { mariadb --no-defaults -S "$MYSQL_SOCKET" -u root "$@"; }
dbd_ok() { timeout 10 sacctmgr -n -P list cluster format=cluster; }
ctld_ok() { timeout 10 scontrol ping | grep -q "is UP"; }
node_state() { timeout 10 sinfo -h -n "$NODE" -o %T 2>/dev/null | head -n1; }
node_idle() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }
healthy() {
  local d
  for d in "${DAEMONS[@]:1}"; do alive "$d" || return 1; done
  munge_ok >/dev/null 2>&1 && ctld_ok && node_idle && dbd_ok >/dev/null 2>&1 && nodes_healthy
}

# ------------------------------------------------------------------ install
install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root to install them"
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$LOG/apt.log" 2>&1; then
    fail "apt-get install failed" "$LOG/apt.log"
  fi
  say "installed in $((SECONDS - t0)) s"
}

# ------------------------------------------------------------------ configuration
write_if_changed() {  # write_if_changed FILE MODE < content; returns 0 when the file changed
  local tmp
  tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  chmod "$2" "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  mv -f "$tmp" "$1"
}

write_configs() {  # returns 0 when slurm.conf or slurmdbd.conf changed
  local host cpus mem head changed=1
  host=$(uname -n); host=${host%%.*}
  head=$(head_addr "$NODES")
  cpus=$(nproc)
  mem=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)  # MB, leaving 10% to the system
  write_if_changed "$CONF" 644 <<EOF && changed=0
$MARKER (state dir $DIR); regenerated by 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$host($head)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job may start again only after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
# no cgroups on CI machines and containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
# accounting through slurmdbd (sacct; submitit needs it to notice jobs that died)
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$head
AccountingStoragePort=6819
JobCompType=jobcomp/none
# scheduling: start jobs within a second or two, many jobs, requeue allowed
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=100000
MaxJobCount=100000
MinJobAge=300
JobRequeue=1
ReturnToService=2
DependencyParameters=kill_invalid_depend
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
# a node that stops answering is DOWN after this long (and its jobs end: NODE_FAIL)
SlurmdTimeout=$(((NODES > 0) ? 30 : 60))
MessageTimeout=20
MailProg=/bin/true
# paths: everything in the state dir
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# compute nodes of --nodes first: Slurm 22.05 stops with "Duplicated NodeHostName node1" when they follow localhost
$(slurm_node_lines "$NODES" "$cpus" "$mem")
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  write_if_changed "$DBDCONF" 600 <<EOF && changed=0
$MARKER (state dir $DIR); mode 600: it holds the database password.
AuthType=auth/munge
DbdHost=$host
DbdAddr=$head
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
  return $changed
}

link_etc() {  # make Debian's default client config path point at ours (see the note at the top)
  [ -n "${CALO_SLURM_NO_ETC:-}" ] && return 0
  mkdir -p "$(dirname "$ETC_CONF")"
  if [ -e "$ETC_CONF" ] && [ ! -L "$ETC_CONF" ] && ! grep -qF "$MARKER" "$ETC_CONF"; then
    die "$ETC_CONF exists and was not written by this script; not replacing it (see CALO_SLURM_NO_ETC in $0)"
  fi
  if [ "$(readlink "$ETC_CONF" 2>/dev/null)" != "$CONF" ]; then
    ln -sfn "$CONF" "$ETC_CONF"
    say "linked $ETC_CONF -> $CONF"
  fi
}

prepare() {
  mkdir -p "$DIR"/{etc,log,pids,run,state,spool/$NODE,shared} "$MUNGE_DIR" "$MYSQL_DIR"
  chmod 700 "$MYSQL_DIR"
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null ||
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  chown munge:munge "$MUNGE_DIR"
  mkdir -p "$(dirname "$MUNGE_SOCKET")"
  chown munge:munge "$(dirname "$MUNGE_SOCKET")" && chmod 755 "$(dirname "$MUNGE_SOCKET")"
}

# ------------------------------------------------------------------ daemons
start_munged() {
  munge_ok >/dev/null 2>&1 && { alive munged || say "using the munged already serving $MUNGE_SOCKET"; return 0; }
  stop munged
  rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
  # munged refuses to run as root: setpriv switches to user munge and execs munged (same PID)
  launch munged "$MUNGE_DIR/munged.out" setpriv --reuid=munge --regid=munge --init-groups -- /usr/sbin/munged -F \
    --socket="$MUNGE_SOCKET" --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed"
  wait_for 15 munged munge_ok || fail "munged did not start" "$MUNGE_DIR/munged.log" "$MUNGE_DIR/munged.out"
  alive munged || fail "the recorded PID is not munged's" "$MUNGE_DIR/munged.log"
}

start_mariadb() {
  if ! alive mariadbd; then
    stop mariadbd
    if [ ! -d "$MYSQL_DIR/data/mysql" ]; then
      say "initialising the database in $MYSQL_DIR/data"
      rm -rf "$MYSQL_DIR/data"
      mariadb-install-db --no-defaults --user=root --datadir="$MYSQL_DIR/data" --skip-test-db \
        --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 ||
        fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
    fi
    rm -f "$MYSQL_SOCKET"
    launch mariadbd "$LOG/mariadb.log" /usr/sbin/mariadbd --no-defaults --user=root --datadir="$MYSQL_DIR/data" \
      --socket="$MYSQL_SOCKET" --pid-file="$DIR/run/mariadbd.pid" --skip-networking --log-error="$LOG/mariadb.log" \
      --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900
  fi
  wait_for 60 mariadbd mysql_root -e "select 1" || fail "mariadbd did not start" "$LOG/mariadb.log"
  mysql_root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;" ||
    fail "could not create the slurm database and user" "$LOG/mariadb.log"
}

start_slurmdbd() {
  if ! alive slurmdbd; then
    stop slurmdbd
    launch slurmdbd "$LOG/slurmdbd.out" /usr/sbin/slurmdbd -D
  fi
  wait_for 60 slurmdbd dbd_ok || fail "slurmdbd does not answer" "$LOG/slurmdbd.log" "$LOG/slurmdbd.out"
  if ! dbd_ok | grep -qx "$CLUSTER"; then
    say "registering cluster $CLUSTER in the accounting database"
    timeout 20 sacctmgr -i add cluster "$CLUSTER" || fail "sacctmgr add cluster failed" "$LOG/slurmdbd.log"
  fi
}

start_slurmctld() {
  if ! alive slurmctld; then
    stop slurmctld
    launch slurmctld "$LOG/slurmctld.out" /usr/sbin/slurmctld -D -f "$CONF"
  fi
  wait_for 30 slurmctld ctld_ok || fail "slurmctld does not answer" "$LOG/slurmctld.log" "$LOG/slurmctld.out"
}

start_slurmd() {
  if ! alive slurmd; then
    stop slurmd
    SLURMD_STARTED=$(date +%s)
    launch slurmd "$LOG/slurmd.out" /usr/sbin/slurmd -D -N "$NODE" -f "$CONF"
  fi
  local i state
  for ((i = 0; i < 60; i++)); do
    state=$(node_state)
    [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] && return 0
    if [[ $state =~ ^(down|drain|drained|draining|fail) ]] && ((i % 10 == 4)); then
      say "node state '$state': resuming it"
      timeout 10 scontrol update nodename="$NODE" state=resume >/dev/null 2>&1
    fi
    sleep 0.5
  done
  fail "node $NODE not idle after 30 s (state '${state:-unknown}')" "$LOG/slurmd-$NODE.log" "$LOG/slurmd.out" \
    "$LOG/slurmctld.log"
}

reap_stale_jobs() {  # after a crash: jobs the controller recovered as running whose processes are gone
  [ -n "${SLURMD_STARTED:-}" ] || return 0  # slurmd kept running: its jobs are real
  local id start
  while read -r id start; do
    [ -n "$id" ] || continue
    start=$(date -d "$start" +%s 2>/dev/null) || continue
    ((start < SLURMD_STARTED)) || continue  # started by the new slurmd
    pgrep -f "^slurmstepd: \[$id\." >/dev/null && continue
    say "job $id is listed as running but its processes died with the old slurmd: cancelling it"
    timeout 10 scancel "$id"
  done < <(timeout 10 squeue -h -t RUNNING,COMPLETING -o "%A %S" 2>/dev/null)
}

check_jobs() {  # a trivial job step, then its record in the accounting database
  local id i state
  if [ "$(node_state)" = allocated ]; then  # busy with other jobs: only check that accounting answers
    timeout 10 sacct -n -X -S now-1minutes -o JobID >/dev/null 2>"$LOG/check.err" ||
      fail "sacct does not work" "$LOG/check.err" "$LOG/slurmdbd.log"
    say "node busy with jobs ($(timeout 10 squeue -h -t R -o %A | tr '\n' ' ')): srun check skipped, sacct ok"
    return 0
  fi
  # shellcheck disable=SC2016  # $SLURM_JOB_ID is expanded by the job's shell
  if ! id=$(timeout 60 srun -n1 -J calo-cluster-check -t 1 sh -c 'echo $SLURM_JOB_ID' 2>"$LOG/check.err"); then
    if grep -q "waiting for resources" "$LOG/check.err" && [ "$(node_state)" = allocated ]; then
      say "WARNING: the check job waited 60 s behind other jobs ($(timeout 10 squeue -h -t R -o %A | tr '\n' ' ')); srun not checked"
      return 0
    fi
    fail "'srun -n1 true' failed" "$LOG/check.err" "$LOG/slurmctld.log" "$LOG/slurmd-$NODE.log"
  fi
  for ((i = 0; i < 60; i++)); do
    state=$(timeout 10 sacct -j "$id" -X -n -P -o State 2>/dev/null | head -n1)
    [ "$state" = COMPLETED ] && { say "check job $id: srun ok, sacct says $state"; return 0; }
    sleep 0.5
  done
  fail "sacct has no COMPLETED record of check job $id (state '${state:-none}')" "$LOG/slurmdbd.log" "$LOG/slurmctld.log"
}

# ------------------------------------------------------------------ commands
up() {  # up [--nodes N]
  local want=0
  case "${1:-}" in
    "") ;;
    --nodes) [[ ${2:-} =~ ^[0-9]+$ ]] && ((${2} <= 50)) || die "--nodes needs a count 0..50, got '${2:-}'"; want=$2 ;;
    *) die "unknown option to up: $1 (usage: up [--nodes N])" ;;
  esac
  mkdir -p "$LOG"
  install_packages
  prepare
  if ((want != NODES)); then
    say "compute nodes: $NODES -> $want"
    cancel_all_jobs
    nodes_down
    NODES=$want
  fi
  if write_configs; then
    local d
    for d in slurmd slurmctld slurmdbd $(cd "$PIDS" && ls -d slurmd@* 2>/dev/null); do
      alive "$d" && { say "configuration changed: restarting $d"; stop "$d"; }
    done
  fi
  if ((NODES > 0)); then echo "$NODES" >"$NODES_FILE"; else rm -f "$NODES_FILE"; fi
  if node_paths_changed; then  # e.g. the tests now run from another checkout under /tmp
    for d in $(cd "$PIDS" && ls -d slurmd@* 2>/dev/null); do say "shared paths changed: restarting $d"; stop "$d"; done
  fi
  link_etc
  if healthy; then
    say "already up and healthy ($DIR); nothing to do"
    return 0
  fi
  nodes_net_up "$NODES"
  start_munged
  start_mariadb
  start_slurmdbd
  start_slurmctld
  start_slurmd
  nodes_up "$NODES"
  reap_stale_jobs
  check_jobs
  check_nodes "$NODES"
  say "up in $((SECONDS - t0)) s: node $NODE $(node_state), $(nproc) CPUs; $NODES compute nodes; logs in $LOG"
}

cancel_all_jobs() {
  ctld_ok 2>/dev/null || return 0
  local jobs i
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [ -n "${jobs// /}" ] || return 0
  say "cancelling jobs: $jobs"
  # shellcheck disable=SC2086
  timeout 10 scancel $jobs 2>/dev/null
  for ((i = 0; i < 40; i++)); do
    [ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  say "jobs still listed after 20 s: $(timeout 10 squeue -h -o '%A %T' 2>/dev/null | tr '\n' ' ')"
}

down() {
  local d i pids
  cancel_all_jobs
  nodes_down
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do stop "${DAEMONS[i]}"; done
  mapfile -t pids < <(leftovers)
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping leftover job processes of this cluster: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null; sleep 2
    mapfile -t pids < <(leftovers)
    [ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null
  fi
  for d in "${DAEMONS[@]}"; do alive "$d" && die "$d is still running"; done
  say "down ($DIR kept; 'purge' deletes it)"
}

status() {
  local d ok=0
  echo "state dir: $DIR"
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "  $d: running (pid $(pid_of "$d"))"
    elif [ "$d" = munged ] && munge_ok >/dev/null 2>&1; then echo "  munged: running (not started by this script)"
    else echo "  $d: NOT running"; ok=1; fi
  done
  if ctld_ok 2>/dev/null; then
    timeout 10 sinfo -N -o "%N %P %T %c %m" 2>&1 | sed 's/^/  /'
    node_idle || { echo "  node $NODE is not usable (state '$(node_state)')"; ok=1; }
    for d in $(node_names "$NODES"); do
      alive "slurmd@$d" || { echo "  slurmd of $d: NOT running"; ok=1; }
    done
    nodes_healthy || { echo "  a compute node is not usable"; ok=1; }
    dbd_ok >/dev/null 2>&1 || { echo "  slurmdbd does not answer (sacct will not work)"; ok=1; }
  else
    echo "  slurmctld does not answer"; ok=1
  fi
  [ $ok -eq 0 ] && echo "healthy" || echo "NOT healthy (logs in $LOG)"
  return $ok
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  purge) down && rm -rf "$DIR" && say "removed $DIR" ;;
  *) echo "usage: $0 up [--nodes N]|down|status|purge   (state dir: \$CALO_SLURM_DIR, default /tmp/calo-slurm)" >&2; exit 2 ;;
esac
