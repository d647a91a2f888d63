#!/usr/bin/env bash
# Two "nodes" on one machine, without SLURM: two `accelerate launch` processes with --num_machines 2,
# machine ranks 0 and 1, rendezvous on 127.0.0.1, PROCS_PER_NODE CPU processes each (default 1), one
# gloo process group over both. It exercises the multi-node code path (node_rank, static rendezvous,
# per-node local ranks) on a laptop or in CI. Waits for both; exits non-zero if either fails.
#
#   launch/local/two_nodes.sh
#   RUN_DIR=/tmp/two_nodes OVERRIDES="train.num_steps=20 log.tracker=wandb" launch/local/two_nodes.sh
#
# Settings (environment):
#   CONFIG             gan-dist config                      (configs/debug.yaml)
#   OVERRIDES          "key=value ..." for gan-dist train    ("")
#   RUN_DIR            run folder                            (runs/two_nodes-<date>-<time>)
#   PROCS_PER_NODE     CPU processes per "node"              (1)
#   MASTER_PORT        rendezvous port                       (a free port)
#   ACCELERATE_CONFIG  accelerate config                     (launch/accelerate/cpu_multi_process.yaml)
#   CPU_THREADS_PER_PROCESS  OMP threads per process         (1: the nodes share this machine's cores)
#   RESUME             --resume value                        (auto: rerunning with the same RUN_DIR continues)
#   LOG_DIR            also write each node's output to LOG_DIR/node<rank>.log ("")
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"

die() {
    echo "two_nodes: error: $*" >&2
    exit 2
}
# require_uint NAME: the variable NAME must be digits only, checked before bash arithmetic sees it (in
# $(( )) an array subscript runs command substitutions: PROCS_PER_NODE='x[$(cmd)]' would run cmd);
# normalized to base 10 (08 is not octal).
require_uint() {
    local value=${!1}
    [[ $value =~ ^[0-9]+$ ]] || die "$1='$value': must be a non-negative integer (digits only)"
    printf -v "$1" '%d' "$((10#$value))"
}

CONFIG=${CONFIG:-configs/debug.yaml}
OVERRIDES=${OVERRIDES:-}
RUN_DIR=${RUN_DIR:-runs/two_nodes-$(date +%Y%m%d-%H%M%S)}
PROCS_PER_NODE=${PROCS_PER_NODE:-1}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/cpu_multi_process.yaml}
CPU_THREADS_PER_PROCESS=${CPU_THREADS_PER_PROCESS:-1}
RESUME=${RESUME:-auto}
LOG_DIR=${LOG_DIR:-}
ACCELERATE=${ACCELERATE:-accelerate}
PYTHON=${PYTHON:-python3}
NUM_MACHINES=2
require_uint PROCS_PER_NODE
((PROCS_PER_NODE >= 1)) || die "PROCS_PER_NODE=0: need at least one process per node"
require_uint CPU_THREADS_PER_PROCESS
if [[ -z ${MASTER_PORT:-} ]]; then
    # Ask the kernel for a free port (a tiny race with other programs is possible; set MASTER_PORT to avoid it).
    MASTER_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
require_uint MASTER_PORT
((MASTER_PORT >= 1 && MASTER_PORT <= 65535)) || die "MASTER_PORT=$MASTER_PORT: must be a TCP port (1-65535)"
# accelerate's torchrun path does not pass use_cpu on to the workers (see the yaml): say it twice.
export ACCELERATE_USE_CPU=1

# Whitespace-separated key=value words, split by `read -a`: an unquoted $OVERRIDES would also expand
# globs (a=* would become file names). -d '': every line, not only the first (read returns 1 at the end).
overrides=()
IFS=$' \t\n' read -r -d '' -a overrides <<<"$OVERRIDES" || true

quote() {
    local out="" arg q="'"
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+="$arg "; else out+="$q${arg//$q/$q\\$q$q}$q "; fi
    done
    echo "${out% }"
}

node_command() {
    local rank=$1
    NODE_CMD=("$ACCELERATE" launch --config_file "$ACCELERATE_CONFIG"
        --num_machines "$NUM_MACHINES" --num_processes $((NUM_MACHINES * PROCS_PER_NODE))
        --machine_rank "$rank" --main_process_ip 127.0.0.1 --main_process_port "$MASTER_PORT"
        --num_cpu_threads_per_process "$CPU_THREADS_PER_PROCESS"
        -m gan_dist train "$CONFIG" "run.out_dir=$(dirname "$RUN_DIR")" "run.name=$(basename "$RUN_DIR")"
        dist.cpu=true "${overrides[@]}" --resume "$RESUME")
}

# prefix RANK: label every output line with its node; optionally keep a per-node log.
prefix() {
    if [[ -n $LOG_DIR ]]; then
        sed -u "s/^/[node$1] /" | tee -a "$LOG_DIR/node$1.log"
    else
        sed -u "s/^/[node$1] /"
    fi
}

if [[ -n $LOG_DIR ]]; then mkdir -p "$LOG_DIR"; fi
declare -A pids=()
stop_all() {
    local rank
    for rank in "${!pids[@]}"; do kill -TERM "${pids[$rank]}" 2>/dev/null || true; done
}
trap 'echo "two_nodes: interrupted, stopping both nodes" >&2; stop_all; exit 130' INT TERM

for rank in 0 1; do
    node_command "$rank"
    echo "two_nodes: node $rank: $(quote "${NODE_CMD[@]}")"
    "${NODE_CMD[@]}" > >(prefix "$rank") 2>&1 &
    pids[$rank]=$!
done

# Wait for both. When one fails, stop the other: it would otherwise wait for its peer until the
# process-group timeout.
failed=0
remaining=2
while ((remaining > 0)); do
    rc=0
    wait -n -p done_pid "${pids[@]}" || rc=$?
    remaining=$((remaining - 1))
    for rank in "${!pids[@]}"; do
        if [[ ${pids[$rank]} == "${done_pid:-}" ]]; then
            echo "two_nodes: node $rank exited with status $rc"
            unset "pids[$rank]"
        fi
    done
    if ((rc != 0 && failed == 0)); then
        failed=$rc
        stop_all
    fi
done
if ((failed != 0)); then
    echo "two_nodes: FAILED (status $failed); run folder $RUN_DIR" >&2
    exit "$failed"
fi
echo "two_nodes: both nodes finished; run folder $RUN_DIR"
