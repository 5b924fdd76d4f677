#!/usr/bin/env bash
# benchmarks/learner_gpu.py on a GPU machine that has torch (CUDA), transformers, nvcc, ninja, einops,
# msgpack, psutil, py-cpuinfo, numpy and tqdm but not deepspeed, hjson or pydantic, and no network: those
# travel in .gpu_deps/ (ignored by git through .git/info/exclude; an identical copy of this script is
# .gpu_deps/run.sh). From the repository root:
#
#     bash benchmarks/learner_gpu_device.sh [learner_gpu.py flags, e.g. --quick]
#
# Writes $OUT/learner_gpu.json and the whole log, $OUT/learner_gpu.log ($OUT defaults to output/benchmarks).
# BUDGET (seconds, default 360) bounds the benchmark itself, FusedAdam's JIT build (1-2 min) included;
# configurations left when it runs out are reported as skipped.
#
# .gpu_deps/, made on the development machine (Python 3.11 venv) for the GPU machine (Python 3.12, x86-64):
#   site/  deepspeed and hjson with their dist-info, copied from .venv/lib/python3.11/site-packages without
#          __pycache__. Both are pure Python (no .so inside): DeepSpeed JIT-builds its CUDA ops from the
#          sources it ships (ops/csrc) when first used.
#   whl/   pydantic, pydantic_core (compiled: the cp312 manylinux wheel), annotated_types, typing_inspection
#          and typing_extensions, at the venv's versions:
#            python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#              --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#              -d .gpu_deps/whl pydantic==2.14.4 pydantic_core==2.50.5 annotated_types==0.8.0 \
#              typing_inspection==0.4.5 typing_extensions==4.16.0
#   (typing_extensions too: pydantic 2.14 needs >= 4.16, newer than torch alone asks for.)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
DEPS=${GPU_DEPS:-$PWD/.gpu_deps}
SITE=${GPU_SITE:-/tmp/site}  # where the wheels are installed
OUT=${OUT:-$PWD/output/benchmarks}
mkdir -p "$OUT" "$SITE"
[ -d "$DEPS/site/deepspeed" ] || { echo "no $DEPS/site/deepspeed: carry .gpu_deps" >&2; exit 2; }

# Wheels are zip files laid out for site-packages: without pip, unzipping them is the same install.
python3 -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --target "$SITE" \
    "$DEPS"/whl/*.whl \
  || for w in "$DEPS"/whl/*.whl; do python3 -m zipfile -e "$w" "$SITE" || exit 2; done

export PYTHONPATH=$SITE:$DEPS/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}  # FusedAdam's JIT build
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # everything is built locally; nothing to fetch
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

{
  nvidia-smi
  echo "nvcc: $(command -v nvcc || echo 'not found')"; nvcc --version 2>&1 | tail -2
  python3 - <<'EOF'
import sys

import deepspeed
import pydantic
import torch
import transformers

print(f"python {sys.version.split()[0]}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
      f"transformers {transformers.__version__}; deepspeed {deepspeed.__version__} ({deepspeed.__file__}); "
      f"pydantic {pydantic.VERSION} ({pydantic.__file__})")
try:
    import flash_attn

    print(f"flash_attn {flash_attn.__version__}")
except ImportError:
    print("flash_attn: not installed (the learner uses sdpa)")
EOF
  python3 benchmarks/learner_gpu.py --out "$OUT/learner_gpu.json" --budget "${BUDGET:-360}" "$@"
} 2>&1 | tee "$OUT/learner_gpu.log"
exit "${PIPESTATUS[0]}"
