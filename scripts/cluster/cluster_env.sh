#!/usr/bin/env bash
# Every variable of a cluster launch (Slurm or Beaker), its default and its meaning, in one place. Sourced by
# the Slurm body (scripts/slurm/grpo_common_slurm.sh) and the node script (scripts/cluster/ray_node.sh); the
# Beaker spec generator (scripts/beaker/make_spec.py) reads the resolved values with --print.
#
#   bash scripts/cluster/cluster_env.sh --help    # the variables
#   bash scripts/cluster/cluster_env.sh --print   # NAME=value for each, after the checks
#
# Any of them can be set in the environment. A value that cannot work stops here with one line, exit status 2.
#
# Layout: the head node (the first Slurm node, Beaker's leader replica) runs the Ray head, judge servers
# and the trainer's driver. With JUDGE_NODES=0 it trains too and keeps JUDGE_GPUS x JUDGE_REPLICAS of its GPUs
# for the judge; with JUDGE_NODES=N >= 1 it and the next N-1 nodes serve the judge only (none of their GPUs
# goes to Ray). Every other node is a Ray worker. Each copy of the judge is a server of its own, on
# JUDGE_PORT, JUDGE_PORT+1, ... of its node; the trainer gets all of them and sends each request to the
# least busy (a copy that fails leaves the rotation for a while).

# ---- variables (name, default, meaning; --help prints this block)
JUDGE_TYPE="${JUDGE_TYPE:-flip}"          # flip or llmjudge: which scripts/train/grpo_<type>.sh runs
PRESET="${PRESET:-paper}"                 # a preset in configs/train/grpo/: paper, single_gpu, tiny
TRAIN_NODES="${TRAIN_NODES:-3}"           # nodes whose GPUs go to Ray: learners and vLLM engines
JUDGE_NODES="${JUDGE_NODES:-1}"           # nodes set aside for the judge (the head first); 0: it shares the head
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"       # GPUs on every node (0: CPU only, the judge runs on CPU)
JUDGE_GPUS="${JUDGE_GPUS:-1}"             # GPUs per copy of the judge: its tensor parallel size
JUDGE_REPLICAS="${JUDGE_REPLICAS:-}"      # copies of the judge per judge node, a server each on its own port;
                                          # none: as many as fit on a judge node, 1 on a shared head node
RAY_PORT="${RAY_PORT:-6379}"              # port of the Ray head (its GCS)
JUDGE_PORT="${JUDGE_PORT:-8000}"          # port of the first copy of the judge on a node (the next: +1, ...)
JUDGE_HOST="${JUDGE_HOST:-0.0.0.0}"       # address the judge listens on (0.0.0.0: every interface)
JUDGE_SERVED_NAME="${JUDGE_SERVED_NAME:-judge}"  # name the judge answers to (litellm: hosted_vllm/<name>)
JUDGE_BASE_URL="${JUDGE_BASE_URL:-}"      # a judge already running elsewhere (with JUDGE_MODEL): none served
RAY_TIMEOUT="${RAY_TIMEOUT:-900}"         # seconds for every node and GPU to join Ray
JUDGE_TIMEOUT="${JUDGE_TIMEOUT:-900}"     # seconds for the judge to answer (download and load included)
DRY_RUN="${DRY_RUN:-0}"                   # 1: the trainer's --dry_run only; first: --dry_run, then the run
OUTPUT_DIR="${OUTPUT_DIR:-output/grpo_${JUDGE_TYPE}_${PRESET}}"  # the run's outputs, on a filesystem all nodes share
LOG_DIR="${LOG_DIR:-$OUTPUT_DIR/cluster_logs}"  # logs of the Ray processes and the judge, one file each
RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"   # token: only processes with RAY_AUTH_TOKEN join Ray; disabled: any
RAY_START_ARGS="${RAY_START_ARGS:-}"      # extra flags for every `ray start` (e.g. --object-store-memory=...)
# ---- end of variables

# The names above, in order: what --print shows and what a Beaker spec hands to every replica.
CLUSTER_VARS=(JUDGE_TYPE PRESET TRAIN_NODES JUDGE_NODES GPUS_PER_NODE JUDGE_GPUS JUDGE_REPLICAS RAY_PORT
  JUDGE_PORT JUDGE_HOST JUDGE_SERVED_NAME JUDGE_BASE_URL RAY_TIMEOUT JUDGE_TIMEOUT DRY_RUN OUTPUT_DIR LOG_DIR
  RAY_AUTH_MODE RAY_START_ARGS)

cluster_env_fail() { echo "error: $*" >&2; exit 2; }

# Whole numbers first, so that the arithmetic below cannot misread a typo.
for _name in TRAIN_NODES JUDGE_NODES GPUS_PER_NODE JUDGE_GPUS RAY_PORT JUDGE_PORT RAY_TIMEOUT JUDGE_TIMEOUT; do
  [[ "${!_name}" =~ ^[0-9]+$ ]] || cluster_env_fail "$_name must be a whole number, not '${!_name}'"
done
[[ -z "$JUDGE_REPLICAS" || "$JUDGE_REPLICAS" =~ ^[1-9][0-9]*$ ]] \
  || cluster_env_fail "JUDGE_REPLICAS must be a whole number of at least 1, not '$JUDGE_REPLICAS'"
[[ "$JUDGE_TYPE" =~ ^(flip|llmjudge)$ ]] || cluster_env_fail "JUDGE_TYPE must be flip or llmjudge, not '$JUDGE_TYPE'"
[[ "$PRESET" =~ ^[A-Za-z0-9_.-]+$ && -f "$(dirname "${BASH_SOURCE[0]}")/../../configs/train/grpo/$PRESET.yaml" ]] \
  || cluster_env_fail "PRESET must name a file in configs/train/grpo/ (paper, single_gpu, tiny), not '$PRESET'"
(( TRAIN_NODES >= 1 )) || cluster_env_fail "TRAIN_NODES must be at least 1 (the nodes that train)"
(( RAY_PORT >= 1 && RAY_PORT <= 65535 && JUDGE_PORT >= 1 && JUDGE_PORT <= 65535 && RAY_PORT != JUDGE_PORT )) \
  || cluster_env_fail "RAY_PORT and JUDGE_PORT must be two different ports (1-65535)"
[[ "$DRY_RUN" =~ ^(0|1|first)$ ]] || cluster_env_fail "DRY_RUN must be 0, 1 or first, not '$DRY_RUN'"
[[ "$RAY_AUTH_MODE" =~ ^(token|disabled)$ ]] \
  || cluster_env_fail "RAY_AUTH_MODE must be token or disabled, not '$RAY_AUTH_MODE'"
if [[ -n "$JUDGE_BASE_URL" ]]; then
  (( JUDGE_NODES == 0 )) || cluster_env_fail "JUDGE_BASE_URL names a running judge, so none is served: set JUDGE_NODES=0"
  [[ -n "${JUDGE_MODEL:-}" ]] || cluster_env_fail "JUDGE_BASE_URL needs JUDGE_MODEL, the judge's litellm id"
fi

# ---- derived values (each node recomputes them)
NUM_NODES=$(( TRAIN_NODES + JUDGE_NODES ))   # nodes in the allocation
if [[ -n "$JUDGE_BASE_URL" ]] || (( GPUS_PER_NODE == 0 )); then
  JUDGE_REPLICAS="${JUDGE_REPLICAS:-1}"
  JUDGE_HEAD_GPUS=0                          # GPUs the judge takes on a judge node (or the shared head)
else
  (( JUDGE_GPUS >= 1 )) || cluster_env_fail "JUDGE_GPUS must be at least 1 on GPU nodes"
  if (( JUDGE_NODES >= 1 )); then JUDGE_REPLICAS="${JUDGE_REPLICAS:-$(( GPUS_PER_NODE / JUDGE_GPUS ))}"; fi
  JUDGE_REPLICAS="${JUDGE_REPLICAS:-1}"
  JUDGE_HEAD_GPUS=$(( JUDGE_GPUS * JUDGE_REPLICAS ))
  if (( JUDGE_NODES >= 1 )); then
    (( JUDGE_HEAD_GPUS >= 1 && JUDGE_HEAD_GPUS <= GPUS_PER_NODE )) \
      || cluster_env_fail "the judge needs JUDGE_GPUS x JUDGE_REPLICAS = $JUDGE_HEAD_GPUS GPUs; a node has $GPUS_PER_NODE"
  else
    (( JUDGE_HEAD_GPUS < GPUS_PER_NODE )) || cluster_env_fail "the judge takes $JUDGE_HEAD_GPUS of the head node's" \
      "$GPUS_PER_NODE GPUs and leaves none to train: lower JUDGE_GPUS or JUDGE_REPLICAS, or set JUDGE_NODES=1"
  fi
fi
(( RAY_PORT < JUDGE_PORT || RAY_PORT >= JUDGE_PORT + JUDGE_REPLICAS )) || cluster_env_fail "RAY_PORT $RAY_PORT is" \
  "one of the judge's ports (JUDGE_PORT to JUDGE_PORT + JUDGE_REPLICAS - 1 = $(( JUDGE_PORT + JUDGE_REPLICAS - 1 )))"
if (( JUDGE_NODES >= 1 )); then HEAD_RAY_GPUS=0; else HEAD_RAY_GPUS=$(( GPUS_PER_NODE - JUDGE_HEAD_GPUS )); fi
RAY_GPUS=$(( (TRAIN_NODES - (JUDGE_NODES == 0)) * GPUS_PER_NODE + HEAD_RAY_GPUS ))  # GPUs the Ray cluster must show

# A token that every Ray process of this run shares (Ray turns away any process without it). Called once per
# run, before any node starts, so that all of them inherit the same one; never printed.
ensure_ray_token() {
  export RAY_AUTH_MODE
  if [[ "$RAY_AUTH_MODE" == token && -z "${RAY_AUTH_TOKEN:-}" ]]; then
    RAY_AUTH_TOKEN="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    export RAY_AUTH_TOKEN
  fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run, not sourced
  case "${1:-}" in
    --print) for _name in "${CLUSTER_VARS[@]}"; do printf '%s=%s\n' "$_name" "${!_name}"; done ;;
    --help|-h)  # the variables block as name, meaning and default
      sed -n '/^# ---- variables/,/^# ---- end of variables/p' "$0" | sed '1d;$d' | awk '
        /^[A-Z_]+=/ { name = $0; sub(/=.*/, "", name); def = $0; sub(/^[^:]*:-/, "", def); sub(/}".*/, "", def)
                      doc = $0; sub(/^[^#]*# */, "", doc)
                      printf "  %-18s %s (default: %s)\n", name, doc, def == "" ? "none" : def; next }
        { doc = $0; sub(/^ *# */, "", doc); printf "  %-18s %s\n", "", doc }' ;;
    *) echo "usage: bash $0 --print | --help" >&2; exit 2 ;;
  esac
fi
