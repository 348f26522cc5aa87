#!/usr/bin/env bash
# A single-node SLURM cluster on localhost (munge + slurmctld + slurmd) for the `slow` SLURM
# test of `oai train --launcher slurm` (tests/models/test_slurm.py). Best effort: when anything
# fails (no root, no packages, a daemon that does not come up within a minute) it prints why and
# exits 0, and the test skips with that reason; CI is never red for a missing cluster.
#   .ci/slurm.sh start   -> writes $OAI_SLURM_DIR/ready (or $OAI_SLURM_DIR/why) and the daemons' pids
#   .ci/slurm.sh stop    -> stops the daemons it started (by their pid files)
set -u
DIR=${OAI_SLURM_DIR:-/tmp/oai-slurm}
mkdir -p "$DIR"
why() { echo "$*" > "$DIR/why"; echo "slurm: $*" >&2; exit 0; }

stop() {
  for name in slurmd slurmctld munged; do
    [ -f "$DIR/$name.pid" ] && kill "$(cat "$DIR/$name.pid")" 2>/dev/null
    rm -f "$DIR/$name.pid"
  done
  rm -f "$DIR/ready"
}

if [ "${1:-start}" = stop ]; then stop; exit 0; fi
rm -f "$DIR/ready" "$DIR/why"
[ "$(id -u)" = 0 ] || why "needs root to run munged/slurmd"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  timeout 240 bash -c 'apt-get update -qq && apt-get install -y -qq slurm-wlm munge' >"$DIR/apt.log" 2>&1 \
    || why "apt-get install slurm-wlm munge failed (see $DIR/apt.log)"
fi
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(awk '/MemTotal/ {print int($2/1024) - 512}' /proc/meminfo)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/munge /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=oaici
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
[ -f /etc/munge/munge.key ] || { (mungekey -c -f -k /etc/munge/munge.key 2>/dev/null || /usr/sbin/create-munge-key -f) >/dev/null 2>&1; }
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
chmod 400 /etc/munge/munge.key 2>/dev/null
if ! pgrep -x munged >/dev/null; then
  runuser -u munge -- munged --pid-file="$DIR/munged.pid" 2>"$DIR/munged.err" || munged -f --pid-file="$DIR/munged.pid" 2>>"$DIR/munged.err" \
    || why "munged did not start ($(tail -1 "$DIR/munged.err"))"
  sleep 0.5; pgrep -x -n munged > "$DIR/munged.pid"
fi
slurmctld -c 2>"$DIR/slurmctld.err" || why "slurmctld did not start ($(tail -1 "$DIR/slurmctld.err"))"
slurmd 2>"$DIR/slurmd.err" || why "slurmd did not start ($(tail -1 "$DIR/slurmd.err"))"
for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
    echo "$HOST" > "$DIR/ready"; echo "slurm: single-node cluster up on $HOST" >&2; exit 0
  fi
  sleep 1
done
state=$(sinfo -h -o %T 2>&1 | head -1)
stop
why "the node did not become idle within 60 s (sinfo: $state; see $DIR/slurmctld.log)"
