#!/usr/bin/env bash
# A real single-node Slurm on loopback (slurmctld + slurmd + slurmdbd/MariaDB + munge), for the
# live-Slurm test (tests/workflow/test_slurm.py) and for trying profiles/slurm on one machine.
#
#   sudo tests/slurm/setup.sh       install (Debian packages) if needed, configure, start
#   sudo tests/slurm/teardown.sh    stop every daemon it started, by PID
#
# Needs root, apt access to the Debian archive (about 20 MB) and the loopback ports 6817-6819 and
# 3306. No systemd: the daemons are started directly and their PIDs kept in $STATE/pids.
# Accounting runs through slurmdbd + MariaDB, as on real clusters: the SLURM executor plugin
# asks `sacct` for job states, and without accounting storage that query fails on every poll
# and Snakemake waits forever without an error.
set -euo pipefail

STATE=${SLURM_CI_STATE:-/run/stpredict-slurm}
CONF_DIR=/etc/slurm
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

log() { echo "[slurm-setup] $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/slurm/setup.sh must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$STATE/pids" "$STATE/log" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld "$CONF_DIR"
chown munge:munge /run/munge
chown mysql:mysql /run/mysqld

alive() {  # alive NAME: the daemon NAME we started is running (PIDs wrap: check the command)
    local f="$STATE/pids/$1.pid"
    [ -s "$f" ] || return 1
    local pid
    pid=$(cat "$f")
    [ -r "/proc/$pid/comm" ] && grep -q "$2" "/proc/$pid/comm"
}

wait_for() {  # wait_for SECONDS CMD...: retry CMD until it succeeds
    local n=$1
    shift
    for _ in $(seq "$n"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 1
    done
    "$@"
}

# --- munge
[ -s /etc/munge/munge.key ] || { /usr/sbin/mungekey --create >/dev/null; }
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive munged munged; then
    log "starting munged"
    setpriv --reuid munge --regid munge --init-groups /usr/sbin/munged --force
    wait_for 10 test -s /run/munge/munged.pid
    cp /run/munge/munged.pid "$STATE/pids/munged.pid"
fi
wait_for 10 bash -c 'munge -n | unmunge'

# --- MariaDB (accounting storage)
if ! alive mariadbd mariadbd; then
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    log "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --innodb-buffer-pool-size=256M \
        --pid-file=/run/mysqld/mysqld.pid >"$STATE/log/mariadb.log" 2>&1 < /dev/null &
    wait_for 30 mariadb-admin ping
    cp /run/mysqld/mysqld.pid "$STATE/pids/mariadbd.pid"
fi
mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# --- configuration: this machine as one node, 90 % of its memory
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
MEM=$((MEM * 9 / 10))
REAL_GPUS=$(find /dev -maxdepth 1 -name 'nvidia[0-9]*' 2>/dev/null | wc -l)
GPUS=${SLURM_CI_GPUS:-1}
[ "$REAL_GPUS" -gt 0 ] && GPUS=$REAL_GPUS
NEW_GRES=0
NEW_CONF=$(mktemp)
cat >"$NEW_CONF" <<EOF
# written by stpredict tests/slurm/setup.sh: one node on loopback
ClusterName=stpredict
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
# a request larger than the partition allows is an error at sbatch, not an eternal wait
EnforcePartLimits=ALL
MinJobAge=300
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/pids/slurmctld.pid
SlurmdPidFile=$STATE/pids/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStorageTRES=gres/gpu
# the rule name the executor plugin puts in --comment, for sacct
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/log/jobcomp.txt
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$GPUS State=UNKNOWN
# the partitions profiles/slurm names (cpu, gpu), both on the one node
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP
EOF
# GPUs: the real ones (/dev/nvidia*), else SLURM_CI_GPUS stand-ins on /dev/null, so that a GPU
# request (--gpus) is accepted and accounted as on a GPU node; the job itself finds no CUDA
# device and runs on the CPU.
{
    echo "# written by stpredict tests/slurm/setup.sh"
    if [ "$REAL_GPUS" -gt 0 ]; then
        echo "NodeName=$HOST Name=gpu File=/dev/nvidia[0-$((REAL_GPUS - 1))]"
    else
        for _ in $(seq "$GPUS"); do echo "NodeName=$HOST Name=gpu File=/dev/null"; done
    fi
} >"$CONF_DIR/gres.conf.new"
cmp -s "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf" 2>/dev/null || NEW_GRES=1
mv "$CONF_DIR/gres.conf.new" "$CONF_DIR/gres.conf"
cat >"$CONF_DIR/slurmdbd.conf" <<EOF
# written by stpredict tests/slurm/setup.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/pids/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 0600 "$CONF_DIR/slurmdbd.conf"

changed=1
if [ "$NEW_GRES" -eq 0 ] && [ -f "$CONF_DIR/slurm.conf" ] && cmp -s "$NEW_CONF" "$CONF_DIR/slurm.conf"; then
    changed=0
fi
mv "$NEW_CONF" "$CONF_DIR/slurm.conf"
chmod 0644 "$CONF_DIR/slurm.conf"

stop() {  # stop NAME COMM: stop a daemon we started (node/accounting changes need a restart)
    if alive "$1" "$2"; then
        kill "$(cat "$STATE/pids/$1.pid")" || true
        for _ in $(seq 20); do alive "$1" "$2" || break; sleep 0.5; done
    fi
}
if [ "$changed" -eq 1 ]; then
    stop slurmd slurmd
    stop slurmctld slurmctld
fi

if ! alive slurmdbd slurmdbd; then
    log "starting slurmdbd"
    /usr/sbin/slurmdbd
    wait_for 30 sacctmgr -n list cluster
fi
if ! alive slurmctld slurmctld; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
if ! alive slurmd slurmd; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi
wait_for 30 bash -c "sinfo -h -N -o %T | grep -q -E '^(idle|mixed|allocated)'" || {
    scontrol update NodeName="$HOST" State=RESUME || true
    wait_for 15 bash -c "sinfo -h -N -o %T | grep -q -E '^(idle|mixed|allocated)'"
}
wait_for 30 bash -c "sacctmgr -n list cluster format=cluster | grep -q stpredict"
log "Slurm is up: node $HOST, $CPUS CPUs, $MEM MB, $GPUS GPU(s); partitions cpu (default), gpu; state in $STATE"
