#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/test_slurm.py: munged, slurmctld and slurmd as
# daemons, all state under one folder ($BENCH_SLURM_DIR, default /tmp/bench-slurm) so that nothing
# in /etc is touched and a second start is a no-op. Needs root (daemons and jobs run as root) and the
# Debian packages slurmctld, slurmd, slurm-client, munge (22.05); .ci/run installs them.
# Clients find the cluster through SLURM_CONF, which this script prints:
#     eval "$(tests/slurm/start-cluster.sh)"   # exports SLURM_CONF
# Run it under `nice` to have the test jobs yield to other work on the machine (tasks inherit
# slurmd's priority).
set -euo pipefail
DIR=${BENCH_SLURM_DIR:-/tmp/bench-slurm}
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF

for tool in munged slurmctld slurmd sinfo sbatch; do
  command -v "$tool" >/dev/null || { echo "start-cluster: $tool not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done

node_idle() { [ "$(sinfo -h -N -o %t 2>/dev/null | head -1)" = idle ] || [ "$(sinfo -h -N -o %t 2>/dev/null | head -1)" = mix ]; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$DIR/munged.pid" && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && node_idle; then
  echo "export SLURM_CONF=$CONF"
  exit 0
fi
"$(dirname "$0")/stop-cluster.sh" >/dev/null 2>&1 || true
rm -rf "$DIR"
# munged refuses a key or socket folder that others can write to.
mkdir -p -m 0700 "$DIR" "$DIR/munge" "$DIR/state" "$DIR/spool"

dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$DIR/munge/munge.key"
munged --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket" \
  --pid-file="$DIR/munged.pid" --log-file="$DIR/munged.log" --seed-file="$DIR/munge/seed" --force

# The node is this host as slurmd sees it (real CPUs and memory), so a job asking for more than the
# machine has is refused at sbatch, as on a real cluster.
read -r NODE < <(slurmd -C | head -1)
HOST=$(hostname -s)
cat > "$CONF" <<CONF
ClusterName=bench
SlurmctldHost=$HOST
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
SlurmctldPort=${BENCH_SLURM_PORT:-6817}
SlurmdPort=$(( ${BENCH_SLURM_PORT:-6817} + 1 ))
# No cgroups here (containers, CI runners): track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# The completion log is what the test reads for start/end times (sacct would need slurmdbd).
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.log
# Cores, not whole nodes, are the unit: two 1-CPU tasks share a 2-core node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
# Keep finished jobs visible briefly only, and let a killed job go quickly.
MinJobAge=60
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=30
$NODE State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
sed -i "s/^NodeName=[^ ]*/NodeName=$HOST/" "$CONF"

slurmctld -f "$CONF" -i
slurmd -f "$CONF"
for _ in $(seq 60); do
  node_idle && { echo "export SLURM_CONF=$CONF"; exit 0; }
  sleep 0.5
done
echo "start-cluster: the node did not come up idle in 30 s; sinfo says:" >&2
sinfo -N >&2 || true
tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
exit 1
