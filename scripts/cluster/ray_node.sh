#!/usr/bin/env bash
# One node of a GRPO run on a Ray cluster. Slurm (scripts/slurm/) and Beaker (scripts/beaker/) start the
# same roles, so that the launch logic lives here only.
#
#   bash scripts/cluster/ray_node.sh leader [grpo_fast flags...]
#       On the head node: starts the Ray head and its copies of the judge, waits until every node and GPU has
#       joined Ray and every copy of the judge answers, then runs the trainer (scripts/train/grpo_$JUDGE_TYPE.sh,
#       preset $PRESET) on this cluster with all of them. Exits with the trainer's status, stopping everything.
#   bash scripts/cluster/ray_node.sh judge
#       On the other JUDGE_NODES - 1 judge nodes: serves JUDGE_REPLICAS copies of the judge and joins Ray
#       without resources to offer (the leader finds the node, and its address, there) until the head is gone.
#   bash scripts/cluster/ray_node.sh worker
#       On every other node: joins the Ray head at $HEAD_HOST:$RAY_PORT and serves until the head is gone.
#   bash scripts/cluster/ray_node.sh beaker [grpo_fast flags...]
#       A Beaker replica: rank 0 is the leader, ranks 1 to JUDGE_NODES - 1 judge nodes, the others workers.
#
# HEAD_HOST is the head node's address as the other nodes reach it (default: this host's name). The other
# variables: `bash scripts/cluster/cluster_env.sh --help`. The Ray head's and the judge's logs go to $LOG_DIR.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source scripts/cluster/cluster_env.sh
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
export PYTHON="$PY"  # scripts/train/ uses the same interpreter
HEAD_HOST="${HEAD_HOST:-$(hostname)}"

die() { echo "error: $*" >&2; exit 1; }

# ---- processes started here: each in a session of its own (a signal meant for this script does not hit
# them half-way, and whatever they leave behind can be killed as a group); stopped in reverse order on exit.
PIDS=()
GRACES=()  # seconds each may take to stop after SIGTERM before its session is killed
start_bg() {  # start_bg GRACE LOG CMD...: CMD in the background, output to LOG ("-": this script's output)
  local grace="$1" log="$2"; shift 2
  if [[ "$log" == - ]]; then setsid "$@" & else setsid "$@" > "$log" 2>&1 & fi
  LAST_PID=$!
  PIDS+=("$LAST_PID")
  GRACES+=("$grace")
}
stop_all() {
  set +e  # every step runs, whatever the one before returned
  local i pid running
  for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do  # the trainer first (it stops its actors), the Ray head last
    pid="${PIDS[i]}"
    # Only jobs still running: the id of one that ended long ago may belong to another process by now.
    running=" $(jobs -pr | tr '\n' ' ') "
    [[ "$running" == *" $pid "* ]] || continue
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq "${GRACES[i]}"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -KILL -- "-$pid" 2>/dev/null  # anything left in its session
  done
  wait 2>/dev/null
  true
}
wait_job() {  # wait_job PID: wait for a job of start_bg (a signal to this script still runs the traps at once),
  # then kill what it left in its session (Ray's agents can outlive the `ray start` that ran them)
  local rc=0
  wait "$1" || rc=$?
  while kill -0 "$1" 2>/dev/null; do  # the wait was cut short by a trap that let the job run on
    rc=0
    wait "$1" || rc=$?
  done
  kill -KILL -- "-$1" 2>/dev/null
  return "$rc"
}
await_ready() {  # await_ready ARGS...: scripts/cluster/wait_ready.py ARGS
  start_bg 2 - "$PY" scripts/cluster/wait_ready.py "$@"
  wait_job "$LAST_PID"
}
on_signals() {
  trap stop_all EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
}
# The leader, once the trainer runs: SIGTERM is passed on to it (it saves its state and exits 75, "preempted,
# resumable"), and the leader exits with the trainer's status; a second SIGTERM stops everything at once.
TRAINER_PID=""
forward_term() {
  if [[ -n "$TRAINER_PID" && -z "${TERM_FORWARDED:-}" ]] && kill -0 "$TRAINER_PID" 2>/dev/null; then
    TERM_FORWARDED=1
    echo "[cluster] SIGTERM: passed on to the trainer, which saves its state before it stops"
    kill -TERM "$TRAINER_PID" 2>/dev/null
  else
    exit 143
  fi
}

ray_command() {  # ray_command ARGS...: sets RAY_CMD to `ray start ARGS --block` with this run's extra flags
  local extra
  read -r -a extra <<< "$RAY_START_ARGS"
  RAY_CMD=("$PY" -m ray.scripts.scripts start "$@" --disable-usage-stats --block "${extra[@]}")
}

# This node's GPUs: on the head node the first HEAD_RAY_GPUS go to Ray; the judge copies take the next
# JUDGE_GPUS each. Ids come from CUDA_VISIBLE_DEVICES when the scheduler set it (they may not start at 0),
# else 0..GPUS_PER_NODE-1.
RAY_ENV=()
GPU_IDS=()
split_gpus() {
  (( GPUS_PER_NODE > 0 )) || return 0
  IFS=, read -r -a GPU_IDS <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( GPUS_PER_NODE - 1 )))}"
  (( ${#GPU_IDS[@]} >= GPUS_PER_NODE )) || die "this node shows ${#GPU_IDS[@]} GPUs, GPUS_PER_NODE says $GPUS_PER_NODE"
  RAY_ENV=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${GPU_IDS[*]:0:HEAD_RAY_GPUS}")")
}

# serve_judges NAME FIRST_GPU: JUDGE_REPLICAS copies of the preset's judge, each a server of its own on JUDGE_PORT + i
# (served by scripts/train/ itself), on JUDGE_GPUS GPUs each from GPU_IDS[FIRST_GPU]; logs named after NAME_i.
# Sets JUDGE_PIDS.
JUDGE_PIDS=()
serve_judges() {
  local name="$1" first="$2" i env parallel=""
  if (( JUDGE_GPUS > 1 )); then parallel=" --tensor-parallel-size $JUDGE_GPUS"; fi
  for (( i = 0; i < JUDGE_REPLICAS; i++ )); do
    env=(SERVE_JUDGE_ONLY=1 JUDGE_HOST="$JUDGE_HOST" JUDGE_PORT=$(( JUDGE_PORT + i ))
      JUDGE_SERVED_NAME="$JUDGE_SERVED_NAME" JUDGE_LOG_NAME="judge_server_${name}_$i" PRESET="$PRESET"
      OUTPUT_DIR="$OUTPUT_DIR" JUDGE_VLLM_ARGS="${JUDGE_VLLM_ARGS:-}$parallel")
    if (( GPUS_PER_NODE > 0 )); then
      env+=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${GPU_IDS[*]:first + i * JUDGE_GPUS:JUDGE_GPUS}")")
    fi
    start_bg 30 "$LOG_DIR/judge_${name}_$i.log" env "${env[@]}" bash "scripts/train/grpo_$JUDGE_TYPE.sh"
    JUDGE_PIDS+=("$LAST_PID")
  done
}

# judge_urls HOST: the api bases of HOST's judge copies, comma-separated
judge_urls() {
  local i urls=()
  for (( i = 0; i < JUDGE_REPLICAS; i++ )); do urls+=("http://$1:$(( JUDGE_PORT + i ))/v1"); done
  (IFS=,; echo "${urls[*]}")
}

# Until the Ray head is gone (after this node's `ray start` ended): the normal end of a run for a node that is
# not the head. The head may let its nodes go a moment before its own port closes, hence a short grace.
head_gone() {
  for _ in $(seq 30); do
    if ! timeout 2 bash -c "exec 3<>/dev/tcp/$HEAD_HOST/$RAY_PORT" 2>/dev/null; then return 0; fi
    sleep 1
  done
  return 1
}

trainer() {  # trainer FLAGS...: scripts/train/grpo_$JUDGE_TYPE.sh on this cluster and judge; returns its status
  # 180 s to stop: the trainer's --preemption_grace_s (120 s by default) to save, and its own shutdown
  start_bg 180 - env RAY_ADDRESS="$HEAD_HOST:$RAY_PORT" JUDGE_BASE_URL="$JUDGE_BASE_URL" JUDGE_MODEL="${JUDGE_MODEL:-}" \
    PRESET="$PRESET" OUTPUT_DIR="$OUTPUT_DIR" bash "scripts/train/grpo_$JUDGE_TYPE.sh" "$@"
  TRAINER_PID="$LAST_PID"
  trap forward_term TERM
  local rc=0
  wait_job "$LAST_PID" || rc=$?
  trap 'exit 143' TERM
  TRAINER_PID=""
  return "$rc"
}

leader() {
  on_signals
  ensure_ray_token
  mkdir -p "$LOG_DIR"
  split_gpus
  echo "[cluster] head $HEAD_HOST: $NUM_NODES nodes, $RAY_GPUS GPUs for Ray; preset $PRESET, judge type" \
    "$JUDGE_TYPE; logs in $LOG_DIR"
  ray_command --head --port "$RAY_PORT" --include-dashboard=false  # the trainer needs no dashboard
  start_bg 15 "$LOG_DIR/ray_head.log" env "${RAY_ENV[@]}" "${RAY_CMD[@]}"
  local head_pid="$LAST_PID" judge_watch=() rc=0 pid host
  if [[ -z "$JUDGE_BASE_URL" && "$DRY_RUN" == 1 ]]; then
    echo "[cluster] dry run: the judge is not served (the trainer's dry run reports what would be)"
  elif [[ -z "$JUDGE_BASE_URL" ]]; then  # the preset's judge: JUDGE_REPLICAS copies here, more on judge nodes
    serve_judges head "$HEAD_RAY_GPUS"
    for pid in "${JUDGE_PIDS[@]}"; do judge_watch+=(--watch "$pid"); done
    JUDGE_BASE_URL="$(judge_urls "$HEAD_HOST")"
    JUDGE_MODEL="hosted_vllm/$JUDGE_SERVED_NAME"
  fi
  await_ready ray "$HEAD_HOST:$RAY_PORT" --nodes "$NUM_NODES" --gpus "$RAY_GPUS" \
    --timeout "$RAY_TIMEOUT" --watch "$head_pid" --log "$LOG_DIR" || exit 1
  echo "[cluster] Ray cluster ready at $HEAD_HOST:$RAY_PORT"
  if (( JUDGE_NODES > 1 )) && [[ "$DRY_RUN" != 1 ]]; then  # the judge nodes, by the address Ray knows them at
    local hosts
    hosts="$("$PY" scripts/cluster/wait_ready.py judge_nodes "$HEAD_HOST:$RAY_PORT" --count $(( JUDGE_NODES - 1 )) \
      --timeout "$RAY_TIMEOUT")" || exit 1
    for host in $hosts; do JUDGE_BASE_URL+=",$(judge_urls "$host")"; done
  fi
  if [[ -n "$JUDGE_BASE_URL" ]]; then
    await_ready judge "$JUDGE_BASE_URL" --timeout "$JUDGE_TIMEOUT" "${judge_watch[@]}" \
      --log "$LOG_DIR/judge_*.log and $OUTPUT_DIR/judge_server*.log" || exit 1
    echo "[cluster] judge ready at $JUDGE_BASE_URL ($JUDGE_MODEL)"
  fi
  if [[ "$DRY_RUN" != 0 ]]; then  # flags, data, judge and Ray resources checked before any model loads
    trainer --dry_run "$@" || rc=$?
    if [[ "$DRY_RUN" == 1 || "$rc" != 0 ]]; then exit "$rc"; fi
  fi
  trainer "$@" || rc=$?
  exit "$rc"
}

worker() {
  on_signals
  join_ray
  start_bg 10 - "${RAY_CMD[@]}"  # a worker holds nothing worth a long drain
  local rc=0
  wait_job "$LAST_PID" || rc=$?
  head_gone && { echo "[cluster] worker $(hostname): the Ray head at $HEAD_HOST:$RAY_PORT is gone; done"; exit 0; }
  die "Ray on worker $(hostname) stopped (status $rc) while the head is up"
}

judge() {
  on_signals
  mkdir -p "$LOG_DIR"
  split_gpus
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "[cluster] judge node $(hostname): dry run, the judge is not served"
  else
    serve_judges "$(hostname)" 0
  fi
  # In Ray with nothing to schedule on, only a marker: the leader reads this node's address from Ray.
  join_ray --num-cpus=0 --num-gpus=0 --resources='{"flip_judge_node": 1}'
  start_bg 10 - "${RAY_CMD[@]}"
  echo "[cluster] judge node $(hostname): $JUDGE_REPLICAS judge copies from port $JUDGE_PORT; in Ray"
  local rc=0
  wait_job "$LAST_PID" || rc=$?
  head_gone && { echo "[cluster] judge node $(hostname): the Ray head at $HEAD_HOST:$RAY_PORT is gone; done"; exit 0; }
  die "Ray on judge node $(hostname) stopped (status $rc) while the head is up"
}

join_ray() {  # join_ray [ray start flags...]: wait for the head, then set RAY_CMD to join it
  [[ "$RAY_AUTH_MODE" == disabled || -n "${RAY_AUTH_TOKEN:-}" ]] \
    || die "RAY_AUTH_TOKEN is not set: a node needs the head's token (or RAY_AUTH_MODE=disabled everywhere)"
  export RAY_AUTH_MODE
  await_ready port "$HEAD_HOST" "$RAY_PORT" --timeout "$RAY_TIMEOUT" || exit 1
  ray_command --address "$HEAD_HOST:$RAY_PORT" "$@"
}

beaker() {
  if (( NUM_NODES == 1 )); then leader "$@"; fi  # one replica: nothing to coordinate (leader exits)
  local rank="${BEAKER_REPLICA_RANK:?not a Beaker replica (BEAKER_REPLICA_RANK is unset)}"
  HEAD_HOST="${BEAKER_LEADER_REPLICA_HOSTNAME:?Beaker did not name a leader: the spec needs leaderSelection}"
  [[ "${BEAKER_REPLICA_COUNT:-$NUM_NODES}" == "$NUM_NODES" ]] \
    || die "$BEAKER_REPLICA_COUNT replicas, but TRAIN_NODES + JUDGE_NODES = $NUM_NODES"
  if [[ "$rank" == 0 ]]; then leader "$@"; elif (( rank < JUDGE_NODES )); then judge; else worker; fi
}

case "${1:-}" in
  leader|judge|worker|beaker) role="$1"; shift; "$role" "$@" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
