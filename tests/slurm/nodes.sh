# shellcheck shell=bash
# The multi-node part of cluster.sh (sourced by it): `up --nodes N` adds compute nodes node1..N, partition
# `nodes`, beside the single node `localhost` (partition `local`, still the default).
#
# Node K is a slurmd in its own network namespace calo-nodeK, joined to the bridge calo-br0 by the veth pair
# calo-vK (head side) / eth0 (node side), address $NET.(10+K)/24; the head (slurmctld, slurmdbd, the login
# shell) is $NET.1 on the bridge. node_boot.sh gives each node its hostname, /tmp, /dev/shm and /etc/hosts.
# Every namespace and link made is recorded in $DIR/net/created and `down` removes exactly those, by name; the
# processes still inside a node's namespace after its slurmd stopped (job tasks) are killed by PID
# (`ip netns pids`). Only addresses this script assigns, on its own bridge, are used: `up` refuses a subnet that
# is already routed on this machine (CALO_SLURM_SUBNET picks another).

NET=${CALO_SLURM_SUBNET:-10.77.0}   # the first three octets of the cluster's /24
BRIDGE=calo-br0
NODES_FILE=$DIR/etc/nodes           # the node count of the running configuration
CREATED=$DIR/net/created            # "netns NAME" / "link NAME", one per line, in creation order
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)

node_count() { cat "$NODES_FILE" 2>/dev/null || echo 0; }
node_names() { local k; for ((k = 1; k <= $1; k++)); do echo "node$k"; done; }
node_addr() { echo "$NET.$((10 + ${1#node}))"; }
head_addr() { if (($1 > 0)); then echo "$NET.1"; else echo 127.0.0.1; fi; }
netns_exists() { ip netns list 2>/dev/null | grep -q "^$1\b"; }
created() { grep -qxF "$*" "$CREATED" 2>/dev/null; }
record() { created "$@" || echo "$*" >>"$CREATED"; }

slurm_node_lines() {  # slurm_node_lines N CPUS MEM: the NodeName and PartitionName lines of the compute nodes
  local n=$1 node
  ((n > 0)) || return 0
  for node in $(node_names "$n"); do
    echo "NodeName=$node NodeAddr=$(node_addr "$node") CPUs=$2 RealMemory=$3 State=UNKNOWN"
  done
  echo "PartitionName=nodes Nodes=node[1-$n] Default=NO MaxTime=INFINITE State=UP"
}

write_hosts() {  # the /etc/hosts every node sees: the head and all nodes by name
  local node
  {
    echo "$MARKER"
    echo "127.0.0.1 localhost"
    echo "$NET.1 $(uname -n) calo-head"
    for node in $(node_names "$1"); do echo "$(node_addr "$node") $node"; done
  } >"$DIR/etc/hosts"
}

check_subnet_free() {
  local used
  used=$(ip -o -4 addr show | awk -v net="$NET." -v br="$BRIDGE" '$2 != br && index($4, net) == 1 {print $2, $4}')
  [ -z "$used" ] || die "subnet $NET.0/24 is already in use here ($used); set CALO_SLURM_SUBNET to a free one"
  used=$(ip -4 route show "$NET.0/24" | grep -v "dev $BRIDGE" || true)
  [ -z "$used" ] || die "subnet $NET.0/24 is already routed here ($used); set CALO_SLURM_SUBNET to a free one"
}

bridge_up() {
  mkdir -p "$(dirname "$CREATED")"
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    created link "$BRIDGE" || die "a link $BRIDGE exists that this script did not make; not touching it"
  else
    check_subnet_free
    say "creating bridge $BRIDGE ($NET.1/24)"
    ip link add "$BRIDGE" type bridge || die "cannot create bridge $BRIDGE (root and iproute2 needed)"
    record link "$BRIDGE"
  fi
  ip addr replace "$NET.1/24" dev "$BRIDGE" && ip link set "$BRIDGE" up || die "cannot configure $BRIDGE"
}

node_net_up() {  # node_net_up NODE: its namespace, veth pair and address (idempotent)
  local node=$1 ns=calo-$1 veth=calo-v${1#node}
  if netns_exists "$ns"; then
    created netns "$ns" || die "a network namespace $ns exists that this script did not make; not touching it"
    return 0
  fi
  say "creating $node: namespace $ns, $veth <-> eth0, $(node_addr "$node")"
  ip netns add "$ns" || die "cannot create network namespace $ns"
  record netns "$ns"
  ip link add "$veth" type veth peer name eth0 netns "$ns" || die "cannot create veth $veth"
  record link "$veth"
  ip link set "$veth" master "$BRIDGE" up &&
    ip -n "$ns" addr add "$(node_addr "$node")/24" dev eth0 &&
    ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up &&
    ip -n "$ns" route add default via "$NET.1" || die "cannot configure the network of $node"
}

shared_paths() {  # paths under /tmp that every node must see besides the state dir
  local p
  echo "$REPO_ROOT"
  tr ':' '\n' <<<"${CALO_SLURM_SHARED:-}" | while read -r p; do [ -z "$p" ] || echo "$p"; done
  return 0
}

start_node() {  # start_node NODE: its slurmd inside its namespaces (node_boot.sh); PID recorded as slurmd@NODE
  local node=$1 paths p
  alive "slurmd@$node" && return 0
  stop "slurmd@$node"
  mkdir -p "$DIR/nodes/$node" "$DIR/spool/$node"
  mapfile -t paths < <(shared_paths)
  for p in "${paths[@]}"; do [ -d "$p" ] || die "CALO_SLURM_SHARED: $p is not a directory"; done
  # nsenter, not `ip netns exec`: that remounts /sys, without the cgroup filesystem slurmd 22.05 needs
  launch "slurmd@$node" "$LOG/slurmd-$node.out" nsenter --net="/run/netns/calo-$node" \
    unshare --uts --mount --propagation private -- bash "$HERE/node_boot.sh" "$node" "$DIR" "$CONF" "${paths[@]}"
}

nodes_net_up() {  # nodes_net_up N: the bridge (the head's address, needed before the daemons start), the
  # nodes' namespaces and their /etc/hosts
  local n=$1 node
  ((n > 0)) || return 0
  write_hosts "$n"
  bridge_up
  for node in $(node_names "$n"); do node_net_up "$node"; done
}

node_paths_changed() {  # the paths bound back into the nodes' /tmp differ from those the running slurmds have
  write_if_changed "$DIR/etc/node_paths" 644 < <(shared_paths)
}

nodes_up() {  # nodes_up N: the slurmds of node1..N; waits until all are idle
  local n=$1 node i state pending
  ((n > 0)) || return 0
  for node in $(node_names "$n"); do start_node "$node"; done
  for ((i = 0; i < 90; i++)); do
    pending=""
    for node in $(node_names "$n"); do
      state=$(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null | head -n1)
      [[ $state =~ ^(idle|mixed|allocated|completing)$ ]] && continue
      pending+=" $node($state)"
      if [[ $state =~ ^(down|drain|drained|draining|fail) ]] && ((i % 10 == 4)); then
        timeout 10 scontrol update nodename="$node" state=resume >/dev/null 2>&1
      fi
    done
    [ -z "$pending" ] && break
    sleep 0.5
  done
  [ -z "$pending" ] || fail "nodes not idle after 45 s:$pending" "$LOG/slurmd-node1.log" "$LOG/slurmd-node1.out" \
    "$LOG/slurmctld.log"
  for node in $(node_names "$n"); do alive "slurmd@$node" || fail "slurmd of $node exited" "$LOG/slurmd-$node.out"; done
}

nodes_healthy() {  # every recorded node's slurmd runs and its node is usable
  local node
  for node in $(node_names "$(node_count)"); do
    alive "slurmd@$node" || return 1
    [[ $(timeout 10 sinfo -h -n "$node" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated|completing)$ ]] || return 1
  done
}

check_nodes() {  # one task per node: each must report its own hostname
  local n=$1 got want
  ((n > 0)) || return 0
  want=$(node_names "$n" | tr '\n' ' ')
  got=$(timeout 60 srun -p nodes -N "$n" --ntasks-per-node=1 -J calo-cluster-check -t 1 hostname 2>"$LOG/check.err" |
    sort -V | tr '\n' ' ')
  [ "$got" = "$want" ] || fail "srun on all nodes printed '$got', expected '$want'" "$LOG/check.err" "$LOG/slurmctld.log"
  say "check job on $n nodes: hostnames $got"
}

nodes_down() {  # stop every node's slurmd and job processes, then remove what was recorded in $CREATED
  local entry kind name node pids
  for node in $(cd "$PIDS" 2>/dev/null && ls -d slurmd@* 2>/dev/null); do stop "$node"; done
  [ -f "$CREATED" ] || return 0
  while read -r kind name; do
    [ "$kind" = netns ] && netns_exists "$name" || continue
    mapfile -t pids < <(ip netns pids "$name" 2>/dev/null)
    if [ ${#pids[@]} -gt 0 ]; then
      say "stopping the processes left in $name: ${pids[*]}"
      kill -TERM "${pids[@]}" 2>/dev/null; sleep 2
      mapfile -t pids < <(ip netns pids "$name" 2>/dev/null)
      [ ${#pids[@]} -gt 0 ] && kill -KILL "${pids[@]}" 2>/dev/null && sleep 0.5
    fi
  done <"$CREATED"
  tac "$CREATED" | while read -r kind name; do
    case $kind in
      netns) netns_exists "$name" && { ip netns delete "$name" && say "removed namespace $name"; } ;;
      link) ip link show "$name" >/dev/null 2>&1 && { ip link delete "$name" && say "removed link $name"; } ;;
    esac
  done
  for entry in $(awk '{print $2}' "$CREATED"); do
    { netns_exists "$entry" || ip link show "$entry" >/dev/null 2>&1; } && die "$entry still exists"
  done
  rm -f "$CREATED" "$NODES_FILE"
}
