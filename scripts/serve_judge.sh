#!/usr/bin/env bash
# Serve a judge model with vLLM's OpenAI-compatible server, and wait until it answers.
#
#   scripts/serve_judge.sh MODEL [PORT] [-- EXTRA VLLM ARGS]
#
# MODEL is an HF id or a local directory; PORT defaults to 8000. Environment: SERVED_MODEL_NAME (default
# MODEL), MAX_MODEL_LEN (judge context window), JUDGE_LOG (server output to this file instead of the
# terminal), JUDGE_HOST (address to listen on: 127.0.0.1 by default, 0.0.0.0 on a cluster where other nodes
# call it). Prints "judge ready ..." once it answers, then serves until Ctrl-C or SIGTERM, which stop the
# server and every process it started. Clients use litellm id hosted_vllm/$SERVED_MODEL_NAME with
# HOSTED_VLLM_API_BASE=http://127.0.0.1:$PORT/v1.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  [[ $# -lt 1 ]] && exit 2 || exit 0
fi
MODEL="$1"; shift
PORT=8000
if [[ $# -gt 0 && "$1" != "--" ]]; then PORT="$1"; shift; fi
[[ "${1:-}" == "--" ]] && shift
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
args=("$MODEL" --port "$PORT" --host "${JUDGE_HOST:-127.0.0.1}" --served-model-name "${SERVED_MODEL_NAME:-$MODEL}")
[[ -n "${MAX_MODEL_LEN:-}" ]] && args+=(--max-model-len "$MAX_MODEL_LEN")
[[ -n "${JUDGE_LOG:-}" ]] && args+=(--log "$JUDGE_LOG")
# exec: the Python launcher becomes this process, so a signal to the script reaches it directly and it
# stops the server's whole process group.
exec "$PY" -m open_instruct.judge_server "${args[@]}" -- "$@"
