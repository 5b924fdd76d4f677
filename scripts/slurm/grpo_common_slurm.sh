# Shared body of grpo_flip.sbatch and grpo_llmjudge.sbatch (sourced from the repository root; JUDGE_TYPE is set
# by the caller). The first node of the allocation is the head: one job step there runs the Ray head, the
# judge and the trainer (scripts/cluster/ray_node.sh leader); the next JUDGE_NODES - 1 nodes serve more copies
# of the judge (ray_node.sh judge); one step on every other node runs a Ray worker.
# When the leader ends, or the job is cancelled, every step is stopped.
set -euo pipefail

# Node count and GPUs per node come from the allocation (the #SBATCH lines) unless set: the nodes that do not
# serve the judge train. An explicit TRAIN_NODES must agree with the allocation.
mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?not inside a Slurm allocation}")
if [[ -z "${GPUS_PER_NODE:-}" && -n "${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}" ]]; then
  GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE##*:}}"  # "h100:8" -> 8
fi
TRAIN_NODES_GIVEN="${TRAIN_NODES:-}"
source scripts/cluster/cluster_env.sh
if [[ -z "$TRAIN_NODES_GIVEN" ]] && (( ${#NODES[@]} > JUDGE_NODES )); then
  TRAIN_NODES=$(( ${#NODES[@]} - JUDGE_NODES ))
  source scripts/cluster/cluster_env.sh  # again, for the values that follow from it
fi
(( ${#NODES[@]} == NUM_NODES )) || cluster_env_fail "the allocation has ${#NODES[@]} nodes, the layout needs" \
  "TRAIN_NODES + JUDGE_NODES = $NUM_NODES: change #SBATCH --nodes or the variables"
HEAD_HOST="${NODES[0]}"

# Every step sees the same values, and the same Ray token (made once, here).
export JUDGE_TYPE HEAD_HOST "${CLUSTER_VARS[@]}"
ensure_ray_token
mkdir -p "$LOG_DIR"

# One task per step, with every CPU of the node (Ray sizes itself from what the step may use); --overlap lets
# the steps share a node's resources with the batch step. A step gets all the job's GPUs on its node.
SRUN=(srun --nodes=1 --ntasks=1 --overlap)
CPUS="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-}}"
if [[ -n "$CPUS" ]]; then SRUN+=("--cpus-per-task=$CPUS"); fi

LEADER_PID=""
WORKER_PIDS=()
running() { [[ " $(jobs -pr | tr '\n' ' ') " == *" $1 "* ]]; }  # a step of ours, still running
stop_steps() {
  set +e  # every step of the clean-up runs
  local pid
  # The leader first: it stops the trainer, the judge and the Ray head in order (srun passes SIGTERM on).
  if [[ -n "$LEADER_PID" ]] && running "$LEADER_PID"; then
    kill -TERM "$LEADER_PID"
    for _ in $(seq 200); do running "$LEADER_PID" || break; sleep 1; done
    running "$LEADER_PID" && kill -KILL "$LEADER_PID"
  fi
  for pid in "${WORKER_PIDS[@]}"; do running "$pid" && kill -TERM "$pid"; done
  for _ in $(seq 20); do
    [[ -n "$(jobs -pr)" ]] || break
    sleep 1
  done
  for pid in "${WORKER_PIDS[@]}"; do running "$pid" && kill -KILL "$pid"; done
  wait 2>/dev/null
  true
}
trap stop_steps EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
# Once the leader runs: SIGTERM (a preemption, or --signal ahead of the time limit) goes on to it, and the
# trainer saves its state and exits 75; the job is then requeued (#SBATCH --requeue) and resumes on restart.
on_term() {
  if [[ -n "$LEADER_PID" && -z "${TERM_FORWARDED:-}" ]] && running "$LEADER_PID"; then
    TERM_FORWARDED=1
    echo "[slurm] SIGTERM: passed on to the head node, where the trainer saves its state"
    kill -TERM "$LEADER_PID"
  else
    exit 143
  fi
}

JUDGE_HOSTS=("${NODES[@]:1:JUDGE_NODES > 1 ? JUDGE_NODES - 1 : 0}")
WORKER_HOSTS=("${NODES[@]:1 + ${#JUDGE_HOSTS[@]}}")
echo "[slurm] job ${SLURM_JOB_ID:-?}: head $HEAD_HOST, judge nodes ${JUDGE_HOSTS[*]:-none more}," \
  "workers ${WORKER_HOSTS[*]:-none}; step logs in $LOG_DIR"
i=0
for node in "${JUDGE_HOSTS[@]}" "${WORKER_HOSTS[@]}"; do  # the same name may come twice (a test's stand-in)
  role=worker
  (( i < ${#JUDGE_HOSTS[@]} )) && role=judge
  "${SRUN[@]}" -w "$node" bash scripts/cluster/ray_node.sh "$role" > "$LOG_DIR/${role}_${node}_$i.log" 2>&1 &
  WORKER_PIDS+=("$!")
  i=$(( i + 1 ))
done
"${SRUN[@]}" -w "$HEAD_HOST" bash scripts/cluster/ray_node.sh leader "$@" &
LEADER_PID=$!
trap on_term TERM
rc=0
wait "$LEADER_PID" || rc=$?  # in the background + wait, so that a signal runs the traps at once
while running "$LEADER_PID"; do rc=0; wait "$LEADER_PID" || rc=$?; done
LEADER_PID=""
if (( rc == 75 )); then  # stopped with its state saved: back in the queue, to resume
  echo "[slurm] the trainer saved its state and stopped (75): requeueing job ${SLURM_JOB_ID:-?}"
  scontrol requeue "${SLURM_JOB_ID:?}" || echo "[slurm] requeue refused: rerun the job to resume" >&2
fi
exit "$rc"
