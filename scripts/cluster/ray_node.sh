#!/usr/bin/env bash
# One node of a GRPO run on a Ray cluster. Slurm (scripts/slurm/) and Beaker (scripts/beaker/) start the
# same roles, so that the launch logic lives here only.
#
#   bash scripts/cluster/ray_node.sh leader [grpo_fast flags...]
#       On the head node: starts the Ray head and the judge server, waits until every node and GPU has joined
#       Ray and the judge answers, then runs the trainer (scripts/train/grpo_$JUDGE_TYPE.sh, preset $PRESET)
#       on this cluster. Exits with the trainer's status, stopping everything it started.
#   bash scripts/cluster/ray_node.sh worker
#       On every other node: joins the Ray head at $HEAD_HOST:$RAY_PORT and serves until the head is gone.
#   bash scripts/cluster/ray_node.sh beaker [grpo_fast flags...]
#       A Beaker replica: the leader replica (rank 0) is the leader, the others are workers.
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

ray_command() {  # ray_command ARGS...: sets RAY_CMD to `ray start ARGS --block` with this run's extra flags
  local extra
  read -r -a extra <<< "$RAY_START_ARGS"
  RAY_CMD=("$PY" -m ray.scripts.scripts start "$@" --disable-usage-stats --block "${extra[@]}")
}

# The head node's GPUs: the first HEAD_RAY_GPUS go to Ray, the next JUDGE_HEAD_GPUS to the judge. Ids come
# from CUDA_VISIBLE_DEVICES when the scheduler set it (they may not start at 0), else 0..GPUS_PER_NODE-1.
RAY_ENV=()
JUDGE_ENV=()
split_head_gpus() {
  (( GPUS_PER_NODE > 0 )) || return 0
  local ids
  IFS=, read -r -a ids <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $(( GPUS_PER_NODE - 1 )))}"
  (( ${#ids[@]} >= GPUS_PER_NODE )) || die "this node shows ${#ids[@]} GPUs, GPUS_PER_NODE says $GPUS_PER_NODE"
  RAY_ENV=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${ids[*]:0:HEAD_RAY_GPUS}")")
  JUDGE_ENV=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${ids[*]:HEAD_RAY_GPUS:JUDGE_HEAD_GPUS}")")
  local parallel=""  # vLLM's own flags for a judge on several GPUs
  if (( JUDGE_GPUS > 1 )); then parallel+=" --tensor-parallel-size $JUDGE_GPUS"; fi
  if (( JUDGE_REPLICAS > 1 )); then parallel+=" --data-parallel-size $JUDGE_REPLICAS"; fi
  JUDGE_ENV+=("JUDGE_VLLM_ARGS=${JUDGE_VLLM_ARGS:-}$parallel")
}

trainer() {  # trainer FLAGS...: scripts/train/grpo_$JUDGE_TYPE.sh on this cluster and judge; returns its status
  start_bg 90 - env RAY_ADDRESS="$HEAD_HOST:$RAY_PORT" JUDGE_BASE_URL="$JUDGE_BASE_URL" JUDGE_MODEL="${JUDGE_MODEL:-}" \
    PRESET="$PRESET" OUTPUT_DIR="$OUTPUT_DIR" bash "scripts/train/grpo_$JUDGE_TYPE.sh" "$@"
  wait_job "$LAST_PID"
}

leader() {
  on_signals
  ensure_ray_token
  mkdir -p "$LOG_DIR"
  split_head_gpus
  echo "[cluster] head $HEAD_HOST: $NUM_NODES nodes, $RAY_GPUS GPUs for Ray; preset $PRESET, judge type" \
    "$JUDGE_TYPE; logs in $LOG_DIR"
  ray_command --head --port "$RAY_PORT" --include-dashboard=false  # the trainer needs no dashboard
  start_bg 15 "$LOG_DIR/ray_head.log" env "${RAY_ENV[@]}" "${RAY_CMD[@]}"
  local head_pid="$LAST_PID" judge_watch=() rc=0
  if [[ -z "$JUDGE_BASE_URL" && "$DRY_RUN" == 1 ]]; then
    echo "[cluster] dry run: the judge is not served (the trainer's dry run reports what would be)"
  elif [[ -z "$JUDGE_BASE_URL" ]]; then  # the preset's judge, served by scripts/train/ itself
    start_bg 30 "$LOG_DIR/judge.log" env "${JUDGE_ENV[@]}" SERVE_JUDGE_ONLY=1 JUDGE_HOST="$JUDGE_HOST" \
      JUDGE_PORT="$JUDGE_PORT" JUDGE_SERVED_NAME="$JUDGE_SERVED_NAME" PRESET="$PRESET" OUTPUT_DIR="$OUTPUT_DIR" \
      bash "scripts/train/grpo_$JUDGE_TYPE.sh"
    judge_watch=(--watch "$LAST_PID")
    JUDGE_BASE_URL="http://$HEAD_HOST:$JUDGE_PORT/v1"
    JUDGE_MODEL="hosted_vllm/$JUDGE_SERVED_NAME"
  fi
  await_ready ray "$HEAD_HOST:$RAY_PORT" --nodes "$NUM_NODES" --gpus "$RAY_GPUS" \
    --timeout "$RAY_TIMEOUT" --watch "$head_pid" --log "$LOG_DIR" || exit 1
  echo "[cluster] Ray cluster ready at $HEAD_HOST:$RAY_PORT"
  if [[ -n "$JUDGE_BASE_URL" ]]; then
    await_ready judge "$JUDGE_BASE_URL" --timeout "$JUDGE_TIMEOUT" "${judge_watch[@]}" \
      --log "$LOG_DIR/judge.log and $OUTPUT_DIR/judge_server.log" || exit 1
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
  [[ "$RAY_AUTH_MODE" == disabled || -n "${RAY_AUTH_TOKEN:-}" ]] \
    || die "RAY_AUTH_TOKEN is not set: a worker needs the head's token (or RAY_AUTH_MODE=disabled everywhere)"
  export RAY_AUTH_MODE
  await_ready port "$HEAD_HOST" "$RAY_PORT" --timeout "$RAY_TIMEOUT" || exit 1
  ray_command --address "$HEAD_HOST:$RAY_PORT"
  start_bg 10 - "${RAY_CMD[@]}"  # a worker holds nothing worth a long drain
  local rc=0
  wait_job "$LAST_PID" || rc=$?
  # Ray on a worker ends when it loses the head: the normal end of a run, not this node's failure. The head
  # may let its workers go a moment before its own port closes, hence a short grace.
  for _ in $(seq 30); do
    if ! timeout 2 bash -c "exec 3<>/dev/tcp/$HEAD_HOST/$RAY_PORT" 2>/dev/null; then
      echo "[cluster] worker $(hostname): the Ray head at $HEAD_HOST:$RAY_PORT is gone; done"
      exit 0
    fi
    sleep 1
  done
  die "Ray on worker $(hostname) stopped (status $rc) while the head is up"
}

beaker() {
  if (( NUM_NODES == 1 )); then leader "$@"; fi  # one replica: nothing to coordinate (leader exits)
  local rank="${BEAKER_REPLICA_RANK:?not a Beaker replica (BEAKER_REPLICA_RANK is unset)}"
  HEAD_HOST="${BEAKER_LEADER_REPLICA_HOSTNAME:?Beaker did not name a leader: the spec needs leaderSelection}"
  [[ "${BEAKER_REPLICA_COUNT:-$NUM_NODES}" == "$NUM_NODES" ]] \
    || die "$BEAKER_REPLICA_COUNT replicas, but TRAIN_NODES + JUDGE_NODES = $NUM_NODES"
  if [[ "$rank" == 0 ]]; then leader "$@"; else worker; fi
}

case "${1:-}" in
  leader|worker|beaker) role="$1"; shift; "$role" "$@" ;;
  *) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
