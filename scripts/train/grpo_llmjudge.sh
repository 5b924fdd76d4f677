#!/usr/bin/env bash
# GRPO with an LLM-as-a-judge baseline reward (pointwise 1-10 quality score, scaled to 0-1).
#
#   bash scripts/train/grpo_llmjudge.sh [extra grpo_fast flags...]
#   PRESET=paper|single_gpu|tiny  (default: tiny when no CUDA GPU is visible, else single_gpu)
#
# Same environment overrides as grpo_flip.sh; the datasets name the `general-quality` verifier instead.
JUDGE_TYPE=llmjudge
source "$(dirname "$0")/grpo_common.sh"
