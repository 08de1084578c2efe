#!/bin/bash
# The inside of one compute node of `cluster.sh up --nodes N` (tests/slurm/README.md): cluster.sh runs it as
#
#   nsenter --net=/run/netns/calo-NODE unshare --uts --mount --propagation private -- bash node_boot.sh NODE DIR CONF [PATH...]
#
# so it starts in the node's own network namespace (its address on the cluster's bridge) and its own UTS and
# mount namespaces, where it gives the node its hostname, its own /tmp (DIR/nodes/NODE/tmp) and /dev/shm, and
# DIR/etc/hosts as /etc/hosts, then execs slurmd (same PID, recorded by cluster.sh). The mounts are private:
# nothing changes outside the node, and they vanish with the node's last process.
#
# The shared filesystem is the machine's own, as a parallel filesystem mounted at the same path on every node.
# Only /tmp is node-local; the paths under /tmp that every node must still see (DIR itself, the repository,
# anything in CALO_SLURM_SHARED) are the PATH arguments, bound back at the same place inside the node's /tmp.
set -euo pipefail
node=$1 dir=$2 conf=$3
shift 3
hostname "$node"
tmp=$dir/nodes/$node/tmp
mkdir -p "$tmp"
chmod 1777 "$tmp"
for path in "$dir" "$@"; do
  case $path in
    /tmp/?*) mkdir -p "$tmp/${path#/tmp/}" && mount --bind "$path" "$tmp/${path#/tmp/}" ;;
  esac
done
mount --rbind "$tmp" /tmp
mount -t tmpfs -o size=25%,mode=1777 "calo-$node-shm" /dev/shm
mount --bind "$dir/etc/hosts" /etc/hosts
exec /usr/sbin/slurmd -D -N "$node" -f "$conf"
