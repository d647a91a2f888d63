#!/usr/bin/env bash
# A real, private SLURM cluster on this machine for the launch tests: one slurmctld and N slurmd
# ("nodes" n1..nN, all on 127.0.0.1), authenticated by a private munged. Everything it writes lives
# under one state folder (default /tmp/gan_dist_slurm, never inside the repo).
#
#   launch/slurm/test_cluster.sh install   # Debian packages (root; seconds)
#   launch/slurm/test_cluster.sh start     # idempotent; waits until every node is idle
#   export SLURM_CONF=/tmp/gan_dist_slurm/slurm.conf   # printed by `start`; or: source /tmp/gan_dist_slurm/env.sh
#   launch/slurm/test_cluster.sh status
#   launch/slurm/test_cluster.sh stop      # kills only the daemons it started (pid files)
#
# Settings (environment):
#   GAN_DIST_SLURM_DIR     state folder                          (default /tmp/gan_dist_slurm)
#   GAN_DIST_SLURM_NODES   number of simulated nodes             (default 2)
#   GAN_DIST_SLURM_CPUS    CPUs declared per node                (default 4: 1 trainer + launcher + slack)
#   GAN_DIST_SLURM_PORT    slurmctld port                        (default 6817)
#   GAN_DIST_SLURMD_PORT   slurmd of node nI listens on this + I  (default 7817)
#
# Facts this follows (verified on Debian 12, slurm 22.05): munge's default paths fail with "PRNG seed
# dir is insecure", so munged runs privately with every path under the state folder; Debian's slurmd is
# built with multiple-slurmd, so one host can run several slurmd (`-N nI`, own port, %n in paths);
# SlurmdParameters=config_overrides lets a node declare more CPUs than the host has.
set -euo pipefail

STATE_DIR=${GAN_DIST_SLURM_DIR:-/tmp/gan_dist_slurm}
NUM_NODES=${GAN_DIST_SLURM_NODES:-2}
CPUS_PER_NODE=${GAN_DIST_SLURM_CPUS:-4}
CTLD_PORT=${GAN_DIST_SLURM_PORT:-6817}
SLURMD_BASE_PORT=${GAN_DIST_SLURMD_PORT:-7817}
START_TIMEOUT_S=${GAN_DIST_SLURM_START_TIMEOUT:-60}

CONF=$STATE_DIR/slurm.conf
MUNGE_DIR=$STATE_DIR/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
PACKAGES=(slurmctld slurmd slurm-client munge shellcheck)

log() { echo "test_cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

run() {
    # Print every command that changes the machine, so a failing CI log shows what was tried.
    log "+ $*"
    "$@"
}

case "$STATE_DIR" in
    /*) ;;
    *) die "GAN_DIST_SLURM_DIR must be an absolute path (got '$STATE_DIR')" ;;
esac
if repo_root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel 2>/dev/null); then
    case "$STATE_DIR/" in
        "$repo_root"/*) die "state folder $STATE_DIR is inside the repository $repo_root; pick one outside" ;;
    esac
fi

node_names() {
    local i
    for ((i = 1; i <= NUM_NODES; i++)); do echo "n$i"; done
}

# pid_alive FILE: the pid in FILE is a running process.
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

export_line() { echo "export SLURM_CONF=$CONF"; }

cmd_install() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v shellcheck >/dev/null || missing+=(shellcheck)
    if ((${#missing[@]} == 0)); then
        log "already installed: ${PACKAGES[*]}"
        return 0
    fi
    [[ $(id -u) == 0 ]] || die "installing needs root: apt-get install -y --no-install-recommends ${PACKAGES[*]}"
    # No service starts by itself after install (no systemd here); `start` runs private daemons.
    run apt-get update -qq
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
}

write_conf() {
    local host node i
    host=$(hostname)
    {
        echo "# Written by launch/slurm/test_cluster.sh; regenerated on every start."
        echo "ClusterName=gandist"
        echo "SlurmctldHost=localhost"
        echo "SlurmctldPort=$CTLD_PORT"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        # cred_expire=10 also shortens how long a requeued job waits before it may start again
        # (its BeginTime): ~11-30 s instead of 121 s.
        echo "AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core"
        echo "SchedulerType=sched/backfill"
        # A requeued job becomes startable at its BeginTime (cred_expire + 1 s), but nothing starts it
        # until the next scheduling pass: every bf_interval (default 30 s) / sched_interval (60 s).
        # Measured here: requeue to restart 23-40 s with the defaults, 11-12 s with these.
        echo "SchedulerParameters=bf_interval=2,sched_interval=2"
        echo "AccountingStorageType=accounting_storage/none"
        echo "JobAcctGatherType=jobacct_gather/none"
        echo "JobCompType=jobcomp/none"
        echo "MailProg=/bin/true"
        echo "StateSaveLocation=$STATE_DIR/state"
        echo "SlurmctldPidFile=$STATE_DIR/run/slurmctld.pid"
        echo "SlurmctldLogFile=$STATE_DIR/log/slurmctld.log"
        echo "SlurmdSpoolDir=$STATE_DIR/spool/%n"
        echo "SlurmdPidFile=$STATE_DIR/run/slurmd-%n.pid"
        echo "SlurmdLogFile=$STATE_DIR/log/slurmd-%n.log"
        echo "SlurmdParameters=config_overrides"
        # A node that was down comes back by itself when its slurmd registers again.
        echo "ReturnToService=2"
        # Finished jobs stay visible to `scontrol show job` for 5 min (there is no sacct here).
        echo "MinJobAge=300"
        echo "SlurmdTimeout=60"
        i=0
        for node in $(node_names); do
            i=$((i + 1))
            echo "NodeName=$node NodeHostname=$host NodeAddr=127.0.0.1 Port=$((SLURMD_BASE_PORT + i)) CPUs=$CPUS_PER_NODE State=UNKNOWN"
        done
        echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
    } >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    if pid_alive "$MUNGE_DIR/munged.pid" && [[ -S $MUNGE_SOCKET ]]; then
        log "munged already running (pid $(<"$MUNGE_DIR/munged.pid"))"
        return 0
    fi
    mkdir -p "$MUNGE_DIR"
    # The socket folder must be searchable by every user (munged checks); the key itself is 0600.
    chmod 0755 "$MUNGE_DIR"
    [[ -s $MUNGE_DIR/munge.key ]] || run mungekey -c -k "$MUNGE_DIR/munge.key"
    chmod 0600 "$MUNGE_DIR/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    run munged --key-file="$MUNGE_DIR/munge.key" --seed-file="$MUNGE_DIR/munged.seed" \
        --log-file="$MUNGE_DIR/munged.log" --pid-file="$MUNGE_DIR/munged.pid" --socket="$MUNGE_SOCKET"
}

start_slurmctld() {
    if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        log "slurmctld already running (pid $(<"$STATE_DIR/run/slurmctld.pid"))"
        return 0
    fi
    # -i: ignore state files from an earlier cluster that cannot be recovered (e.g. other node names).
    run slurmctld -f "$CONF" -i
}

start_slurmd() {
    local node=$1
    if pid_alive "$STATE_DIR/run/slurmd-$node.pid"; then
        log "slurmd $node already running (pid $(<"$STATE_DIR/run/slurmd-$node.pid"))"
        return 0
    fi
    mkdir -p "$STATE_DIR/spool/$node"
    run slurmd -f "$CONF" -N "$node"
}

wait_idle() {
    local deadline states
    deadline=$((SECONDS + START_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        # One state per node; ready when every one of the NUM_NODES nodes is idle (or already
        # running test jobs from an earlier start: alloc/mix).
        states=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | sort -u || true)
        if [[ -n $states ]] && (($(grep -cE ' (idle|alloc|mix)$' <<<"$states") == NUM_NODES)); then
            return 0
        fi
        if grep -qE ' (down|drain|drng|fail)\*?$' <<<"$states"; then
            # A node left down by an earlier run: ask slurmctld to take it back.
            SLURM_CONF=$CONF scontrol update nodename="$(node_names | paste -sd,)" state=resume 2>/dev/null || true
        fi
        sleep 1
    done
    log "nodes not idle after ${START_TIMEOUT_S}s:"
    SLURM_CONF=$CONF sinfo -N >&2 || true
    log "logs: $STATE_DIR/log/"
    return 1
}

cmd_start() {
    local node
    for bin in munged mungekey slurmctld slurmd sinfo; do
        command -v "$bin" >/dev/null || die "$bin not found; run: $0 install"
    done
    mkdir -p "$STATE_DIR"/{state,spool,run,log}
    # The daemons refuse state dirs that others can write to.
    chmod 0755 "$STATE_DIR"
    if ! pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        write_conf
    elif [[ ! -s $CONF ]]; then
        die "slurmctld is running but $CONF is missing; run '$0 stop' first"
    fi
    start_munge
    start_slurmctld
    for node in $(node_names); do start_slurmd "$node"; done
    wait_idle
    # For scripts: `source $STATE_DIR/env.sh` points the SLURM commands at this cluster.
    export_line >"$STATE_DIR/env.sh"
    SLURM_CONF=$CONF sinfo -N
    cat <<MSG
test_cluster: up: $NUM_NODES nodes x $CPUS_PER_NODE CPUs, state in $STATE_DIR
Use it from this shell with:
    $(export_line)
e.g. sbatch --wait --nodes=2 launch/slurm/multi_node.sbatch ; stop it with: $0 stop
MSG
}

# stop_pidfile NAME FILE: SIGTERM the process in FILE (only that one), wait for it to go.
stop_pidfile() {
    local name=$1 file=$2 pid i
    if ! pid_alive "$file"; then
        rm -f "$file"
        return 0
    fi
    pid=$(<"$file")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

cmd_stop() {
    local file node
    # Jobs still running on the nodes would outlive their slurmd: cancel them first.
    if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        SLURM_CONF=$CONF scancel --full --quiet "--user=$(id -un)" 2>/dev/null || true
    fi
    # slurmd first (it reports to slurmctld), then slurmctld, then munged (both use it).
    for file in "$STATE_DIR"/run/slurmd-*.pid; do
        [[ -e $file ]] || continue
        node=${file##*/slurmd-}
        stop_pidfile "slurmd ${node%.pid}" "$file"
    done
    stop_pidfile slurmctld "$STATE_DIR/run/slurmctld.pid"
    stop_pidfile munged "$MUNGE_DIR/munged.pid"
    log "stopped (state kept in $STATE_DIR; remove it for a clean start)"
}

cmd_status() {
    local rc=0 file
    if pid_alive "$MUNGE_DIR/munged.pid"; then echo "munged: running (pid $(<"$MUNGE_DIR/munged.pid"))"; else echo "munged: stopped"; rc=1; fi
    if pid_alive "$STATE_DIR/run/slurmctld.pid"; then
        echo "slurmctld: running (pid $(<"$STATE_DIR/run/slurmctld.pid"))"
    else
        echo "slurmctld: stopped"
        rc=1
    fi
    for file in "$STATE_DIR"/run/slurmd-*.pid; do
        [[ -e $file ]] || continue
        if pid_alive "$file"; then echo "slurmd ${file##*/}: running (pid $(<"$file"))"; else echo "slurmd ${file##*/}: stopped"; rc=1; fi
    done
    if ((rc == 0)); then
        SLURM_CONF=$CONF sinfo -N || rc=1
        SLURM_CONF=$CONF squeue || rc=1
        export_line
    fi
    return "$rc"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 install|start|stop|status   (state in \$GAN_DIST_SLURM_DIR, default /tmp/gan_dist_slurm)" >&2
        exit 2
        ;;
esac
