#!/usr/bin/env bash
# Stops what start-cluster.sh started (by the pid files in its folder, nothing else) and removes the
# folder. Running jobs die with slurmd's steps.
DIR=${BENCH_SLURM_DIR:-/tmp/bench-slurm}
[ -d "$DIR" ] || exit 0
export SLURM_CONF=$DIR/slurm.conf
scancel --quiet --user="$(id -un)" 2>/dev/null || true
for daemon in slurmd slurmctld munged; do
  pid=$(cat "$DIR/$daemon.pid" 2>/dev/null) || continue
  # A stale pid file (after a reboot) may name someone else's process now.
  [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ] || continue
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
rm -rf "$DIR"
