# shellcheck shell=bash
# Shared body of single_node.sbatch and multi_node.sbatch: settings, the per-node `accelerate launch`
# command, signal forwarding and requeue. Sourced by the sbatch scripts (not run by itself).
#
# Signals (why it is done this way):
# - The scripts ask for `--signal=B:USR1@T`: SLURM sends SIGUSR1 to the batch shell only, T seconds
#   before the time limit (up to ~30 s earlier: slurmctld checks signal times every ~30 s). The batch
#   shell must know the signal came, because only it can requeue the job after the step returns;
#   a signal sent to the steps only (no `B:`) would reach python but leave the shell unaware.
# - The trap forwards it with `scancel --signal=USR1 $SLURM_JOB_ID`, which signals every process of the
#   job's steps (not the batch shell): bash wrapper, accelerate/torchrun launcher, trainer processes.
#   It repeats it every FORWARD_EVERY_S until the step ends: a trainer that is still starting has no
#   handler yet and ignores it (seen on the test cluster, where the signal came 1 s after the start).
# - accelerate launch / torchrun do not handle SIGUSR1, and its default action kills the process, so
#   the launcher must ignore it: the step runs `bash -c 'trap "" USR1 TERM; exec accelerate launch ...'`.
#   An ignored signal stays ignored across exec and fork (python keeps SIG_IGN for signals it does not
#   handle), so launcher and workers ignore it until the trainer installs its own handler
#   (signal.signal re-enables it). SIGTERM: torchrun installs its own handler (it forwards SIGTERM to
#   its workers and waits for them); with one process accelerate's simple launcher would die at once
#   and let SLURM end the step under the trainer, so it ignores TERM too. SLURM always follows
#   SIGTERM with SIGKILL after KillWait, so nothing can outlive the job.
# - The trainer finishes its step, all ranks agree, the main process writes an atomic checkpoint
#   (temp folder, then rename), every rank exits 75. torchrun (accelerate launch's multi-process path)
#   reports every worker failure as 1, 75 and a real error alike, so the exit status cannot tell them
#   apart. Then, if the signal came, the run is not finished (below) and the step published a complete
#   checkpoint that was not there before it started, the batch shell runs `scontrol requeue
#   $SLURM_JOB_ID`. A step that failed after the signal without saving anything (data error, diverged,
#   crash during the start) is not requeued: it would only fail again. The job keeps its id, so the run
#   folder (default ${SLURM_JOB_NAME}-${SLURM_JOB_ID}) is the same and `--resume auto` continues from
#   the newest complete checkpoint. A kill during the checkpoint write leaves only a .tmp-step_N folder
#   that resume ignores, so a requeue never starts from a broken state.
# - Finished means RUN_DIR/done.json records a step >= the train.num_steps this job trains to (CONFIG +
#   OVERRIDES). A done.json left by a shorter run does not skip anything: the step always runs, and the
#   trainer itself continues the run, or exits 0 without training when it is already finished.
# - SIGTERM on the batch shell (scancel, the time limit itself, preemption by the scheduler) never
#   requeues here: a user's scancel must stop the job, and preemption with PreemptMode=REQUEUE requeues
#   by itself. SLURM signals the steps directly in those cases.
#
# User values are data, never code: every number is checked to be digits only before bash arithmetic
# sees it (in (( )) an array subscript runs command substitutions: GPUS_PER_NODE='PATH[$(cmd)]' would run
# cmd), and OVERRIDES is split into words without glob expansion.

gd_log() { echo "[gan_dist $(date +%H:%M:%S)] $*"; }
gd_die() {
    gd_log "error: $*" >&2
    exit 2
}

# gd_uint NAME [SHOWN_AS]: die unless the variable NAME holds a plain non-negative integer (digits
# only); then normalize it to base 10 (bash would read 08 as a bad octal number). SHOWN_AS is the name
# the user sets (e.g. SLURM_NNODES for NNODES), for the error line.
gd_uint() {
    local gd_name=$1 gd_value=${!1-}
    [[ $gd_value =~ ^[0-9]+$ ]] ||
        gd_die "${2:-$gd_name}=$(gd_quote "$gd_value"): must be a non-negative integer (digits only)"
    printf -v "$gd_name" '%d' "$((10#$gd_value))"
}

# gd_quote ARGS...: the command as one line that can be pasted into a shell.
gd_quote() {
    local out="" arg q="'"
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            out+="$arg "
        else
            out+="$q${arg//$q/$q\\$q$q}$q "
        fi
    done
    echo "${out% }"
}

# Settings from the environment, with defaults (globals used by the functions below).
gd_settings() {
    local kind=$1 # single | multi
    REPO_DIR=${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}
    [[ -f $REPO_DIR/pyproject.toml && -d $REPO_DIR/launch ]] ||
        gd_die "REPO_DIR=$REPO_DIR is not the gan_dist repository: submit from the repository root or set REPO_DIR"
    # Relative CONFIG, ACCELERATE_CONFIG, OUT_DIR and RUN_DIR are relative to the repository root.
    cd "$REPO_DIR" || gd_die "cannot cd to $REPO_DIR"

    CONFIG=${CONFIG:-configs/mnist_dcgan.yaml}
    # key=value overrides for `gan-dist train`, separated by whitespace (no spaces inside a value). Split
    # by `read -a`, never by an unquoted $OVERRIDES, which would also expand globs (a=* would become the
    # names of files in REPO_DIR). -d '': all lines, not only the first (read then returns 1 at the end).
    OVERRIDES=${OVERRIDES:-}
    GD_OVERRIDES=()
    IFS=$' \t\n' read -r -d '' -a GD_OVERRIDES <<<"$OVERRIDES" || true
    local word
    for word in "${GD_OVERRIDES[@]}"; do
        case $word in
            run.name=* | run.out_dir=* | checkpoint.resume=*)
                gd_die "set RUN_NAME / OUT_DIR / RUN_DIR / RESUME instead of run.name, run.out_dir or checkpoint.resume in OVERRIDES (the script must know the run folder to decide about requeueing)" ;;
        esac
    done
    # The run folder must not change when the job is requeued: the job id is kept on requeue.
    if [[ -n ${RUN_DIR:-} ]]; then
        OUT_DIR=$(dirname "$RUN_DIR")
        RUN_NAME=$(basename "$RUN_DIR")
    else
        OUT_DIR=${OUT_DIR:-runs}
        RUN_NAME=${RUN_NAME:-${SLURM_JOB_NAME:-gan_dist}-${SLURM_JOB_ID:-local}}
        RUN_DIR=$OUT_DIR/$RUN_NAME
    fi
    RESUME=${RESUME:-auto}
    MAX_REQUEUES=${MAX_REQUEUES:-20}
    gd_uint MAX_REQUEUES
    RESTART_COUNT=${SLURM_RESTART_COUNT:-0}
    gd_uint RESTART_COUNT SLURM_RESTART_COUNT
    # Seconds srun lets the other nodes' tasks run after the first one ends (their main process may
    # still be writing a checkpoint or closing wandb); also bounds a hang after one node crashed.
    STEP_WAIT_S=${STEP_WAIT_S:-300}
    gd_uint STEP_WAIT_S
    # After the first SIGUSR1, send it again every this many seconds until the step ends.
    FORWARD_EVERY_S=${FORWARD_EVERY_S:-20}
    gd_uint FORWARD_EVERY_S
    ((FORWARD_EVERY_S >= 1)) || gd_die "FORWARD_EVERY_S=0: must be at least 1 (seconds between SIGUSR1 repeats)"
    # Reads RUN_DIR/done.json and resolves train.num_steps after the step (is the run finished?).
    PYTHON=${PYTHON:-python3}

    NNODES=${SLURM_NNODES:-1}
    gd_uint NNODES SLURM_NNODES
    ((NNODES >= 1)) || gd_die "SLURM_NNODES=0: need at least one node"
    if [[ $kind == single && $NNODES != 1 ]]; then
        gd_die "single_node.sbatch got $NNODES nodes; use multi_node.sbatch"
    fi
    if [[ -z ${GPUS_PER_NODE:-} ]]; then
        if [[ -n ${SLURM_GPUS_ON_NODE:-} ]]; then
            GPUS_PER_NODE=$SLURM_GPUS_ON_NODE
        elif command -v nvidia-smi >/dev/null 2>&1; then
            GPUS_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
        else
            GPUS_PER_NODE=0
        fi
    fi
    gd_uint GPUS_PER_NODE
    # CPU mode (tests, machines without GPUs): processes form a gloo group.
    CPU=${CPU:-}
    if [[ -z $CPU ]]; then
        if ((GPUS_PER_NODE == 0)); then
            gd_log "no GPU found on this node (GPUS_PER_NODE=0): running on CPUs (set CPU=1 to say so)"
            CPU=1
        else
            CPU=0
        fi
    fi
    [[ $CPU == 0 || $CPU == 1 ]] || gd_die "CPU=$(gd_quote "$CPU"): must be 1 (CPUs only, gloo) or 0 (GPUs)"
    if [[ $CPU == 1 ]]; then
        PROCS_PER_NODE=${PROCS_PER_NODE:-1}
        ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/cpu_multi_process.yaml}
        # The torchrun path of accelerate does not pass use_cpu to the workers (see the yaml).
        export ACCELERATE_USE_CPU=1
    else
        PROCS_PER_NODE=${PROCS_PER_NODE:-$GPUS_PER_NODE}
        if [[ $kind == single ]]; then
            ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/one_node_bf16.yaml}
        else
            ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate/multi_node.yaml}
        fi
    fi
    gd_uint PROCS_PER_NODE
    ((PROCS_PER_NODE >= 1)) || gd_die "PROCS_PER_NODE=$PROCS_PER_NODE: need at least one process per node"
    NUM_PROCESSES=$((NNODES * PROCS_PER_NODE))
    # One port per job id, so two jobs sharing a node do not collide; the same after a requeue.
    if [[ -z ${MASTER_PORT:-} ]]; then
        local job_id=${SLURM_JOB_ID:-9500}
        gd_uint job_id SLURM_JOB_ID
        MASTER_PORT=$((20000 + job_id % 20000))
    fi
    gd_uint MASTER_PORT
    ((MASTER_PORT >= 1 && MASTER_PORT <= 65535)) || gd_die "MASTER_PORT=$MASTER_PORT: must be a TCP port (1-65535)"
    MIXED_PRECISION=${MIXED_PRECISION:-}
    CPU_THREADS_PER_PROCESS=${CPU_THREADS_PER_PROCESS:-}
    if [[ -n $CPU_THREADS_PER_PROCESS ]]; then gd_uint CPU_THREADS_PER_PROCESS; fi
    CPUS_PER_TASK=${CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
    gd_uint CPUS_PER_TASK
    ACCELERATE=${ACCELERATE:-accelerate}
    [[ -f $CONFIG ]] || gd_die "CONFIG=$CONFIG not found (relative to $REPO_DIR)"
    [[ -f $ACCELERATE_CONFIG ]] || gd_die "ACCELERATE_CONFIG=$ACCELERATE_CONFIG not found"
}

# The address of the node that runs machine rank 0 (the first node of the allocation). SLURM node
# names need not resolve (e.g. the local test cluster's n1, n2 on 127.0.0.1): use the node's NodeAddr.
gd_main_process_ip() {
    local first addr
    if [[ -n ${MAIN_PROCESS_IP:-} ]]; then
        echo "$MAIN_PROCESS_IP"
        return
    fi
    first=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    addr=$(scontrol show node "$first" -o 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)
    echo "${addr:-$first}"
}

# Builds STEP_CMD (srun + per-node wrapper + accelerate launch + gan-dist train) from the settings.
gd_build_command() {
    local launch=(--config_file "$ACCELERATE_CONFIG" --num_machines "$NNODES" --num_processes "$NUM_PROCESSES"
        --main_process_port "$MASTER_PORT")
    if ((NNODES > 1)); then
        launch+=(--main_process_ip "$(gd_main_process_ip)")
    fi
    # gan_dist builds its Accelerator with train.mixed_precision, which beats accelerate launch's
    # --mixed_precision and the config file's value: set both so they agree.
    if [[ -n $MIXED_PRECISION ]]; then launch+=(--mixed_precision "$MIXED_PRECISION"); fi
    if [[ -n $CPU_THREADS_PER_PROCESS ]]; then
        launch+=(--num_cpu_threads_per_process "$CPU_THREADS_PER_PROCESS")
    fi
    local train=(-m gan_dist train "$CONFIG" "run.out_dir=$OUT_DIR" "run.name=$RUN_NAME")
    if [[ $CPU == 1 ]]; then train+=(dist.cpu=true); fi
    if [[ -n $MIXED_PRECISION ]]; then train+=("train.mixed_precision=$MIXED_PRECISION"); fi
    train+=("${GD_OVERRIDES[@]}" --resume "$RESUME")
    # One task per node. The machine rank is read on each node ($SLURM_NODEID inside single quotes,
    # expanded by the task's own bash), never in this batch shell (where it is always 0).
    # --kill-on-bad-exit=0 and --wait: when one node's task ends (e.g. exit 75 after a checkpoint) the
    # others get STEP_WAIT_S seconds to finish rather than being killed mid-write.
    # shellcheck disable=SC2016  # $SLURM_NODEID and $@ must expand on the node, not here
    STEP_CMD=(srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --cpus-per-task="$CPUS_PER_TASK"
        --kill-on-bad-exit=0 --wait="$STEP_WAIT_S"
        bash -c 'trap "" USR1 TERM; echo "[gan_dist] node $SLURMD_NODENAME: machine_rank $SLURM_NODEID"; exec "$1" launch --machine_rank "$SLURM_NODEID" "${@:2}"'
        gan_dist-node "$ACCELERATE" "${launch[@]}" "${train[@]}")
}

GD_SIGNALLED=""
GD_TERMINATED=""
GD_RESENDER=""

gd_forward_usr1() {
    # Steps only (no --batch/--full): the trainer processes and their launchers, not this shell.
    scancel --signal=USR1 "$SLURM_JOB_ID" || gd_log "warning: scancel --signal=USR1 $SLURM_JOB_ID failed"
}

gd_on_usr1() {
    gd_log "SIGUSR1 (time limit near or preemption): asking the training step to checkpoint and stop"
    gd_forward_usr1
    if [[ -z $GD_SIGNALLED ]]; then
        GD_SIGNALLED=USR1
        # A trainer that is still starting (imports, data, rendezvous) has not installed its handler
        # yet and ignores the signal (the launcher wrapper's SIG_IGN), so repeat it until the step ends;
        # a second SIGUSR1 to a trainer that is already stopping changes nothing.
        (
            trap - USR1 TERM
            while sleep "$FORWARD_EVERY_S"; do gd_forward_usr1; done
        ) &
        GD_RESENDER=$!
    fi
}

gd_on_term() {
    GD_TERMINATED=1
    gd_log "SIGTERM: SLURM is ending the job (scancel, time limit or preemption; it signals the steps itself); no requeue from here"
}

# The newest complete checkpoint folder (with its completion marker meta.json), or nothing. Names are
# step_ + 8 digits, so the glob's sorted order is the step order; temp and set-aside folders never match.
gd_newest_checkpoint() {
    local dir newest=""
    for dir in "$RUN_DIR"/checkpoints/step_*/; do
        if [[ -f ${dir}meta.json ]]; then newest=${dir%/}; fi
    done
    echo "$newest"
}

# gd_finished STEP_RC: whether the run is finished: RUN_DIR/done.json records a step >= the
# train.num_steps this job trains to (CONFIG + OVERRIDES, resolved by gan_dist's own config loader).
# A done.json left by a shorter run (OVERRIDES raised train.num_steps since) is not finished.
gd_finished() {
    local step_rc=$1 steps done_step num_steps
    [[ -f $RUN_DIR/done.json ]] || return 1
    # shellcheck disable=SC2016  # python code, not shell
    if ! steps=$("$PYTHON" -c 'import json, sys
from gan_dist.configure import load_config
with open(sys.argv[1]) as f:
    done = json.load(f)
print(int(done["step"]), load_config(sys.argv[2], sys.argv[3:]).train.num_steps)' \
        "$RUN_DIR/done.json" "$CONFIG" "${GD_OVERRIDES[@]}" 2>&1); then
        # Without the numbers, trust the trainer: it exits 0 only when it reached train.num_steps.
        gd_log "warning: cannot compare $RUN_DIR/done.json with train.num_steps ($PYTHON: ${steps##*$'\n'}); finished only if the step exited 0 (exit $step_rc)"
        ((step_rc == 0))
        return
    fi
    # The last line: python's warnings, if any, come first (stderr is unbuffered, stdout is flushed at exit).
    read -r done_step num_steps <<<"${steps##*$'\n'}"
    if ! [[ $done_step =~ ^[0-9]+$ && $num_steps =~ ^[0-9]+$ ]]; then
        gd_log "warning: unexpected step numbers from $RUN_DIR/done.json and the config: $(gd_quote "$steps")"
        return 1
    fi
    if ((done_step < num_steps)); then
        gd_log "$RUN_DIR/done.json records step $done_step < train.num_steps $num_steps: not finished"
        return 1
    fi
}

# Runs the step, forwards signals, then exits 0 (finished), requeues (stopped by the signal after a
# new checkpoint), or fails.
gd_run() {
    local kind=$1
    gd_settings "$kind"
    gd_build_command
    gd_log "job ${SLURM_JOB_ID:-?} ($kind) restart $RESTART_COUNT: $NNODES node(s) x $PROCS_PER_NODE process(es), cpu=$CPU, run folder $RUN_DIR"
    gd_log "running: $(gd_quote "${STEP_CMD[@]}")"
    if [[ ${DRY_RUN:-0} == 1 ]]; then
        return 0
    fi
    # No shortcut on RUN_DIR/done.json here: it may be left by a shorter run. The trainer decides, and
    # exits 0 at once (rewriting nothing) when the run is finished at >= train.num_steps.
    local before
    before=$(gd_newest_checkpoint)
    trap gd_on_usr1 USR1
    trap gd_on_term TERM
    # In the background + wait: bash runs a trap only between commands, and `wait` returns early when
    # a trapped signal arrives; a foreground srun would delay the forwarding until the step ended.
    "${STEP_CMD[@]}" &
    local step_pid=$! step_rc=0
    while kill -0 "$step_pid" 2>/dev/null; do
        wait "$step_pid" || true
    done
    wait "$step_pid" || step_rc=$?
    trap - USR1
    if [[ -n $GD_RESENDER ]]; then kill "$GD_RESENDER" 2>/dev/null || true; fi

    if gd_finished "$step_rc"; then
        gd_log "finished: $(tr -d '\n' <"$RUN_DIR/done.json" | cut -c1-300)"
        return 0
    fi
    local newest
    newest=$(gd_newest_checkpoint)
    if [[ -n $GD_TERMINATED ]]; then
        gd_log "step ended (exit $step_rc) after SIGTERM; newest checkpoint: ${newest:-none}; resubmit to continue (same RUN_DIR, --resume auto)"
        return $((step_rc == 0 ? 1 : step_rc))
    fi
    if [[ $GD_SIGNALLED == USR1 ]]; then
        # The exit status cannot say "stopped early" (torchrun reports 75 as 1): a checkpoint this step
        # published can. Without one, the step failed (or was stopped before it saved): a requeue
        # would start from the same state and fail the same way.
        if [[ -z $newest || $newest == "$before" ]]; then
            gd_log "step ended (exit $step_rc) after SIGUSR1 without writing a new checkpoint (newest: ${newest:-none}): it failed rather than stopped early; not requeueing. See its output above; resubmit to continue (same RUN_DIR, --resume auto)"
            return $((step_rc == 0 ? 1 : step_rc))
        fi
        if ((RESTART_COUNT >= MAX_REQUEUES)); then
            gd_log "stopped by the signal (step exit $step_rc) but already requeued $MAX_REQUEUES times (MAX_REQUEUES): giving up"
            return 1
        fi
        gd_log "stopped by the signal (step exit $step_rc) with a new checkpoint: ${newest}; requeueing job $SLURM_JOB_ID (it resumes with --resume auto)"
        # Ends this shell: SLURM kills the batch step and puts the job back in the queue.
        scontrol requeue "$SLURM_JOB_ID"
        sleep 60 # not reached in practice
        return 0
    fi
    gd_log "training step failed (exit $step_rc) without a stop signal; not requeueing. Newest checkpoint: ${newest:-none}"
    return $((step_rc == 0 ? 1 : step_rc))
}
