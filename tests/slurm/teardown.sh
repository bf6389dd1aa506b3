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
# With the daemons stopped, a Slurm client waits MessageTimeout (10 s) for the controller before
# it fails, and every `snakemake` start probes `scontrol show config` (the executor plugin's
# help text): 10 s per call for the rest of the session. A stopped test cluster answers at once
# (setup.sh writes the file afresh, default timeout, on the next start).
CONF=/etc/slurm/slurm.conf  # as setup.sh
if [ -f "$CONF" ] && grep -q "written by stpredict tests/slurm/setup.sh" "$CONF"; then
    sed -i '/^MessageTimeout=/d;/^# stopped by stpredict/d' "$CONF"
    printf '# stopped by stpredict tests/slurm/teardown.sh: clients fail at once\nMessageTimeout=1\n' >>"$CONF"
fi
echo "[slurm-teardown] stopped" >&2
