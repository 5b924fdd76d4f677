# Shared body of grpo_flip.sh and grpo_llmjudge.sh (sourced; JUDGE_TYPE is set by the caller).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
export LITELLM_LOCAL_MODEL_COST_MAP=True

if [[ -z "${PRESET:-}" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then PRESET=single_gpu; else PRESET=tiny; fi
fi
if [[ "$JUDGE_TYPE" == flip ]]; then HUB_DATA=yikeee/rlvr_general_chat_flip; LOCAL_DATA=data/general_chat_flip_sample.jsonl
else HUB_DATA=yikeee/rlvr_general_chat; LOCAL_DATA=data/general_chat_sample.jsonl; fi
SEED="${SEED:-1}"
# A dry run (--dry_run among the trainer flags) starts no server and builds no judge: it only checks.
DRY=0
ARGS=("$@")
for i in "${!ARGS[@]}"; do
  if [[ "${ARGS[$i]}" == --dry_run ]]; then
    [[ "${ARGS[$((i + 1))]:-}" =~ ^([Ff]alse|0|no|off)$ ]] || DRY=1
  fi
done

case "$PRESET" in
  paper)  # the published recipe: 3 nodes x 8 GPUs (launch on a Ray cluster: RAY_ADDRESS=auto)
    MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-allenai/Olmo-3-7B-Think-DPO}"
    DATASETS="${DATASETS:-$HUB_DATA 1.0}"
    JUDGE_SERVE_MODEL="${JUDGE_SERVE_MODEL:-Qwen/Qwen3-4B}"
    CHAT_TEMPLATE="${CHAT_TEMPLATE:-olmo_thinker}"
    PRESET_ARGS=(--beta 0.0 --async_steps 1 --truncated_importance_sampling_ratio_cap 2.0
      --num_samples_per_prompt_rollout 8 --num_unique_prompts_rollout 24 --num_mini_batches 1 --num_epochs 1
      --learning_rate 1e-6 --per_device_train_batch_size 1 --kl_estimator 2 --max_prompt_token_length 2048
      --response_length 16384 --pack_length 18432 --stop_strings "</answer>" --non_stop_penalty False
      --temperature 1.0 --total_episodes 10000000 --deepspeed_stage 3 --num_learners_per_node 8
      --vllm_num_engines 16 --vllm_tensor_parallel_size 1 --llm_judge_timeout 3600 --llm_judge_max_tokens 2048
      --llm_judge_max_context_length 25000 --lr_scheduler_type constant --seed "$SEED" --local_eval_every 50
      --save_freq 50 --checkpoint_state_freq 50 --gradient_checkpointing --vllm_enable_prefix_caching
      --clip_higher 0.272 --mask_truncated_completions True --with_tracking)
    ;;
  single_gpu)  # one GPU shared by a vLLM engine and one learner; the judge on the same GPU unless JUDGE_BASE_URL
    MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-Qwen/Qwen3-1.7B}"
    DATASETS="${DATASETS:-$HUB_DATA 1.0}"
    JUDGE_SERVE_MODEL="${JUDGE_SERVE_MODEL:-Qwen/Qwen3-0.6B}"
    JUDGE_EXTRA_ARGS=(--gpu-memory-utilization 0.2 --max-model-len 8192)
    PRESET_ARGS=(--async_steps 1 --truncated_importance_sampling_ratio_cap 2.0 --num_samples_per_prompt_rollout 8
      --num_unique_prompts_rollout 8 --learning_rate 1e-6 --response_length 2048 --pack_length 4096
      --max_prompt_token_length 1024 --total_episodes 64000 --deepspeed_stage 2 --num_learners_per_node 1
      --vllm_num_engines 1 --single_gpu_mode --vllm_gpu_memory_utilization 0.3 --gradient_checkpointing --vllm_enable_prefix_caching
      --clip_higher 0.272 --mask_truncated_completions True --llm_judge_max_context_length 8192
      --llm_judge_max_tokens 1024 --save_freq 100 --local_eval_every 50 --seed "$SEED")
    ;;
  tiny)  # the embedded default: tiny models built offline, real vLLM judge server, a few steps on CPU.
    # The tiny judge has random weights, so its rewards are mostly equal within a group; keeping those
    # groups (advantage 0) still runs the learner and the weight sync on every step.
    [[ -n "${MODEL_NAME_OR_PATH:-}" ]] || { MODEL_NAME_OR_PATH=.cache/tiny-policy
      "$PY" -m open_instruct.testing.tiny_models --output_dir "$MODEL_NAME_OR_PATH" --seed 1; }
    DATASETS="${DATASETS:-$LOCAL_DATA 1.0}"
    if [[ -z "${JUDGE_BASE_URL:-}" && -z "${JUDGE_SERVE_MODEL:-}" ]]; then
      JUDGE_SERVE_MODEL=.cache/tiny-judge
      [[ "$DRY" == 1 ]] || "$PY" -m open_instruct.testing.tiny_models --output_dir "$JUDGE_SERVE_MODEL" --seed 0
    fi
    JUDGE_EXTRA_ARGS=(--enforce-eager)
    JUDGE_MAX_MODEL_LEN=2048
    PRESET_ARGS=(--async_steps 1 --num_samples_per_prompt_rollout 4 --num_unique_prompts_rollout 8
      --response_length 32 --pack_length 512 --max_prompt_token_length 256 --total_episodes 128
      --learning_rate 1e-5 --deepspeed_stage 2 --num_learners_per_node 1 --vllm_num_engines 1
      --truncated_importance_sampling_ratio_cap 2.0 --clip_higher 0.272 --llm_judge_max_tokens 48
      --llm_judge_max_context_length 2048 --llm_judge_timeout 60 --local_eval_every 2 --local_eval_prompts 8
      --filter_zero_std_samples False --save_freq 2 --keep_last_n_checkpoints 1 --with_tracking --seed "$SEED")
    ;;
  *) echo "error: PRESET must be paper, single_gpu or tiny, not '$PRESET'" >&2; exit 2 ;;
esac
# Extra vLLM flags for the judge server on top of the preset's (the cluster launcher adds its parallelism here).
read -r -a MORE_JUDGE_ARGS <<< "${JUDGE_VLLM_ARGS:-}"
JUDGE_EXTRA_ARGS+=("${MORE_JUDGE_ARGS[@]}")
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
    kill -TERM "$TRAIN_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$TRAIN_PID" 2>/dev/null || break; sleep 1; done
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
  echo "[grpo] serving judge $JUDGE_SERVE_MODEL on port $PORT (log: $OUTPUT_DIR/judge_server.log)"
  SERVED_MODEL_NAME="$SERVED" MAX_MODEL_LEN="${JUDGE_MAX_MODEL_LEN:-}" JUDGE_LOG="$OUTPUT_DIR/judge_server.log" \
    bash scripts/serve_judge.sh "$JUDGE_SERVE_MODEL" "$PORT" -- "${JUDGE_EXTRA_ARGS[@]}" > "$OUTPUT_DIR/judge_server.out" 2>&1 &
  JUDGE_PID=$!
  until grep -q "judge ready" "$OUTPUT_DIR/judge_server.out" 2>/dev/null; do
    kill -0 "$JUDGE_PID" 2>/dev/null || { tail -5 "$OUTPUT_DIR/judge_server.out" >&2; echo "error: the judge server did not start" >&2; exit 1; }
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
TEMPLATE_ARGS=()
[[ -n "${CHAT_TEMPLATE:-}" ]] && TEMPLATE_ARGS=(--chat_template_name "$CHAT_TEMPLATE")

echo "[grpo] preset=$PRESET model=$MODEL_NAME_OR_PATH judge=$JUDGE_MODEL@$JUDGE_BASE_URL data=$DATASETS -> $OUTPUT_DIR"
"$PY" -m open_instruct.grpo_fast \
  --model_name_or_path "$MODEL_NAME_OR_PATH" --dataset_mixer_list "${DATASET_ARGS[@]}" "${EVAL_ARGS[@]}" \
  --llm_judge_model "$JUDGE_MODEL" --llm_judge_api_base "$JUDGE_BASE_URL" \
  --output_dir "$OUTPUT_DIR" --exp_name "$EXP_NAME" "${TEMPLATE_ARGS[@]}" "${PRESET_ARGS[@]}" "$@" &
TRAIN_PID=$!
wait "$TRAIN_PID"  # in the background + wait, so a signal to this script runs the traps at once
