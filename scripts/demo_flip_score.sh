#!/usr/bin/env bash
# The FLIP reward end to end, offline: build the small world's tiny judge (trained on CPU the first time, a few
# minutes; open_instruct/testing/world.py), serve it with a real vLLM server on loopback, score responses of
# every kind (on task, another topic, another form, a broken constraint, generic, an echo of the prompt) from
# data/flip_world/score.jsonl, stop the server. The world is synthetic: real scoring uses a real judge
# (e.g. Qwen/Qwen3-4B served by scripts/serve_judge.sh).
#
# Environment: OUTPUT_DIR (default output/demo), INPUT (default data/flip_world/score.jsonl), PORT (default: a
# free one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUTPUT_DIR="${OUTPUT_DIR:-output/demo}"
INPUT="${INPUT:-data/flip_world/score.jsonl}"
WORLD_DIR=.cache/flip-world
JUDGE_DIR=$WORLD_DIR/judge
PORT="${PORT:-$("$PY" -c 'from open_instruct.net_utils import free_port; print(free_port())')}"
mkdir -p "$OUTPUT_DIR"
export LITELLM_LOCAL_MODEL_COST_MAP=True

echo "[demo] 1/3 the small world's judge -> $JUDGE_DIR"
"$PY" -m open_instruct.testing.world_models --output_dir "$WORLD_DIR"

echo "[demo] 2/3 vLLM judge server on port $PORT (log: $OUTPUT_DIR/judge_server.log)"
SERVED_MODEL_NAME=tiny-judge MAX_MODEL_LEN=2048 JUDGE_LOG="$OUTPUT_DIR/judge_server.log" \
  bash scripts/serve_judge.sh "$JUDGE_DIR" "$PORT" -- --enforce-eager > "$OUTPUT_DIR/judge_server.out" 2>&1 &
SERVER_PID=$!
cleanup() { kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT
trap 'exit 130' INT TERM
for _ in $(seq 600); do
  grep -q "judge ready" "$OUTPUT_DIR/judge_server.out" 2>/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUTPUT_DIR/judge_server.out"; echo "[demo] judge server failed"; exit 1; }
  sleep 1
done
grep "judge ready" "$OUTPUT_DIR/judge_server.out"

echo "[demo] 3/3 FLIP scoring $INPUT"
"$PY" -m open_instruct.flip score --input "$INPUT" --output "$OUTPUT_DIR/scored.jsonl" \
  --llm_judge_model hosted_vllm/tiny-judge --llm_judge_api_base "http://127.0.0.1:$PORT/v1" \
  --llm_judge_max_tokens 64 --llm_judge_max_context_length 2048

"$PY" - "$OUTPUT_DIR/scored.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for r in rows:
    instruction = r.get("instruction") or r["messages"][-1]["content"]
    reward = "failed" if r["reward"] is None else f"{r['reward']:.3f}"
    print(f"\n[{r.get('kind', '?')}] reward {reward}{'' if r['parsed'] else ' (unparsed)'}")
    print(f"  instruction: {instruction}")
    print(f"  response:    {r['response'][:90]!r}")
    print(f"  inferred:    {r['inferred_instruction']}")
print(f"\n{len(rows)} rows in {sys.argv[1]}")
PY
