# Shared body of grpo_flip.sh and grpo_llmjudge.sh (sourced; JUDGE_TYPE is set by the caller).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
export LITELLM_LOCAL_MODEL_COST_MAP=True

if [[ -z "${PRESET:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then PRESET=single_gpu; else PRESET=tiny; fi
fi
# A dry run (--dry_run among the trainer flags) starts no server and builds no judge: it only checks.
DRY=0
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  if [[ "${ARGS[$i]}" == --dry_run ]]; then
    [[ "${ARGS[$((i + 1))]:-}" =~ ^([Ff]alse|0|no|off)$ ]] || DRY=1
  fi
done

# The preset is a config file (the trainer reads its flags with --config); its `launch` section says what to
# serve as the judge and which data each judge type trains on.
PRESET_FILE="configs/train/grpo/$PRESET.yaml"
[[ -f "$PRESET_FILE" ]] || { echo "error: PRESET must be one of: $(cd configs/train/grpo && ls *.yaml | sed 's/\.yaml//' | tr '\n' ' ')not '$PRESET'" >&2; exit 2; }
eval "$("$PY" -m open_instruct.grpo_config --launch_settings "$PRESET_FILE" "$JUDGE_TYPE")"
TRAIN_ARGS=(--config "$PRESET_FILE")
[[ -n "${MODEL_NAME_OR_PATH:-}" ]] && TRAIN_ARGS+=(--model_name_or_path "$MODEL_NAME_OR_PATH")
DATASETS="${DATASETS:-$PRESET_DATA}"
[[ -z "${JUDGE_BASE_URL:-}" && -z "${JUDGE_SERVE_MODEL:-}" ]] && JUDGE_SERVE_MODEL="$PRESET_JUDGE_SERVE_MODEL"
# The tiny preset's world (its policy and judge) is built on first use; a dry run that is given a model and
# serves no judge needs none of it.
if [[ -n "$PRESET_WORLD" ]] && [[ "$DRY" == 0 || -z "${MODEL_NAME_OR_PATH:-}" ]]; then
  "$PY" -m open_instruct.testing.world_models --output_dir "$PRESET_WORLD"
fi
[[ -n "${SEED:-}" ]] && TRAIN_ARGS+=(--seed "$SEED")
[[ -n "${CHAT_TEMPLATE:-}" ]] && TRAIN_ARGS+=(--chat_template_name "$CHAT_TEMPLATE")
# vLLM flags for the judge server: the preset's, then JUDGE_VLLM_ARGS (the cluster launcher adds parallelism).
read -r -a JUDGE_EXTRA_ARGS <<< "$PRESET_JUDGE_VLLM_ARGS ${JUDGE_VLLM_ARGS:-}"
OUTPUT_DIR="${OUTPUT_DIR:-output/grpo_${JUDGE_TYPE}_${PRESET}}"
EXP_NAME="${EXP_NAME:-grpo_${JUDGE_TYPE}_${PRESET}}"
mkdir -p "$OUTPUT_DIR"

# Serve the judge ourselves unless one is given; stop it, and everything else started here, on any exit.
JUDGE_PID=""
TRAIN_PID=""
cleanup() {
  set +e  # every step of the clean-up runs, whatever the one before it returned
  # The trainer first (SIGTERM: it shuts its Ray cluster down), then the judge server and its engine.
  if [[ -n "$TRAIN_PID" ]] && kill -0 "$TRAIN_PID" 2>/dev/null; then
    kill -TERM "$TRAIN_PID" 2>/dev/null  # it saves its state first (--preemption_grace_s, 120 s by default)
    for _ in $(seq 170); do kill -0 "$TRAIN_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$TRAIN_PID" 2>/dev/null
  fi
  [[ -n "$JUDGE_PID" ]] && kill -TERM "$JUDGE_PID" 2>/dev/null && wait "$JUDGE_PID" 2>/dev/null
  true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [[ -z "${JUDGE_BASE_URL:-}" && "$DRY" == 1 ]]; then
  # What would be served, at the address it would have; the trainer's dry run reports it as not started.
  PORT="${JUDGE_PORT:-8000}"
  SERVED="${JUDGE_SERVED_NAME:-judge}"
  echo "[grpo] dry run: would serve judge $JUDGE_SERVE_MODEL on port $PORT (not started)"
  JUDGE_BASE_URL="http://127.0.0.1:$PORT/v1"
  JUDGE_MODEL="${JUDGE_MODEL:-hosted_vllm/$SERVED}"
  export DRY_RUN_LAUNCHER_JUDGE="$JUDGE_SERVE_MODEL"
fi
if [[ -z "${JUDGE_BASE_URL:-}" ]]; then
  PORT="${JUDGE_PORT:-$("$PY" -c 'from open_instruct.net_utils import free_port; print(free_port())')}"
  SERVED="${JUDGE_SERVED_NAME:-judge}"
  JUDGE_LOG_BASE="$OUTPUT_DIR/${JUDGE_LOG_NAME:-judge_server}"  # a cluster names each copy of the judge's logs
  echo "[grpo] serving judge $JUDGE_SERVE_MODEL on port $PORT (log: $JUDGE_LOG_BASE.log)"
  SERVED_MODEL_NAME="$SERVED" JUDGE_LOG="$JUDGE_LOG_BASE.log" \
    bash scripts/serve_judge.sh "$JUDGE_SERVE_MODEL" "$PORT" -- "${JUDGE_EXTRA_ARGS[@]}" > "$JUDGE_LOG_BASE.out" 2>&1 &
  JUDGE_PID=$!
  until grep -q "judge ready" "$JUDGE_LOG_BASE.out" 2>/dev/null; do
    kill -0 "$JUDGE_PID" 2>/dev/null || { tail -5 "$JUDGE_LOG_BASE.out" >&2; echo "error: the judge server did not start" >&2; exit 1; }
    sleep 1
  done
  JUDGE_BASE_URL="http://127.0.0.1:$PORT/v1"
  JUDGE_MODEL="${JUDGE_MODEL:-hosted_vllm/$SERVED}"
fi
JUDGE_MODEL="${JUDGE_MODEL:-hosted_vllm/${JUDGE_SERVE_MODEL:?set JUDGE_MODEL, the litellm id of the judge at JUDGE_BASE_URL}}"
# SERVE_JUDGE_ONLY=1: serve the preset's judge and nothing else, until stopped (a cluster's judge node does this;
# JUDGE_HOST=0.0.0.0 lets other nodes reach it).
if [[ -n "${SERVE_JUDGE_ONLY:-}" ]]; then
  [[ -n "$JUDGE_PID" ]] || { echo "error: SERVE_JUDGE_ONLY serves a judge; JUDGE_BASE_URL names one already" >&2; exit 2; }
  echo "[grpo] judge $JUDGE_MODEL on port $PORT serving until stopped"
  wait "$JUDGE_PID"
  exit
fi

read -r -a DATASET_ARGS <<< "$DATASETS"
EVAL_ARGS=()
[[ -n "${EVAL_DATASETS:-}" ]] && { read -r -a E <<< "$EVAL_DATASETS"; EVAL_ARGS=(--dataset_mixer_eval_list "${E[@]}"); }

echo "[grpo] preset=$PRESET ($PRESET_FILE) model=${MODEL_NAME_OR_PATH:-as in the preset} judge=$JUDGE_MODEL@$JUDGE_BASE_URL" \
  "data=$DATASETS -> $OUTPUT_DIR"
"$PY" -m open_instruct.grpo_fast "${TRAIN_ARGS[@]}" --dataset_mixer_list "${DATASET_ARGS[@]}" "${EVAL_ARGS[@]}" \
  --llm_judge_model "$JUDGE_MODEL" --llm_judge_api_base "$JUDGE_BASE_URL" \
  --output_dir "$OUTPUT_DIR" --exp_name "$EXP_NAME" "$@" &
TRAIN_PID=$!
# SIGTERM (a preemption) goes on to the trainer, which saves its state and exits 75 ("rerun to resume"); this
# script waits for it and exits with its status. A second SIGTERM reaches it too and stops it at once.
trap 'kill -TERM "$TRAIN_PID" 2>/dev/null' TERM
rc=0
wait "$TRAIN_PID" || rc=$?  # in the background + wait, so a signal to this script runs the traps at once
while kill -0 "$TRAIN_PID" 2>/dev/null; do rc=0; wait "$TRAIN_PID" || rc=$?; done
exit "$rc"
