#!/usr/bin/env bash
# GRPO with FLIP rewards: the judge infers each response's instruction; reward = token F1 with the real one.
#
#   bash scripts/train/grpo_flip.sh [extra grpo_fast flags...]
#   PRESET=paper|single_gpu|tiny  (default: tiny when no CUDA GPU is visible, else single_gpu)
#
# Environment overrides: MODEL_NAME_OR_PATH, DATASETS, EVAL_DATASETS, JUDGE_MODEL (litellm id),
# JUDGE_SERVE_MODEL (what to serve when no JUDGE_BASE_URL is given), JUDGE_BASE_URL, OUTPUT_DIR, EXP_NAME,
# CHAT_TEMPLATE, SEED. See scripts/train/grpo_common.sh.
JUDGE_TYPE=flip
source "$(dirname "$0")/grpo_common.sh"
