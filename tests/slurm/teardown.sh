#!/usr/bin/env bash
# Stop the daemons tests/slurm/setup.sh started, by PID (checking each PID still is that daemon:
# PIDs wrap), in the reverse order. The packages and the database stay for the next start.
set -uo pipefail

STATE=${SLURM_CI_STATE:-/run/stpredict-slurm}

for spec in slurmd:slurmd slurmctld:slurmctld slurmdbd:slurmdbd mariadbd:mariadbd munged:munged; do
    name=${spec%%:*}
    comm=${spec##*:}
    f="$STATE/pids/$name.pid"
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if [ -r "/proc/$pid/comm" ] && grep -q "$comm" "/proc/$pid/comm"; then
        kill "$pid" 2>/dev/null
        for _ in $(seq 40); do
            [ -r "/proc/$pid/comm" ] && grep -q "$comm" "/proc/$pid/comm" || break
            sleep 0.25
        done
        if [ -r "/proc/$pid/comm" ] && grep -q "$comm" "/proc/$pid/comm"; then
            kill -9 "$pid" 2>/dev/null
        fi
    fi
    rm -f "$f"
done
echo "[slurm-teardown] stopped" >&2
