"""Smoke test for the benchmark that only runs in full on a GPU: benchmarks/learner_gpu.py, on CPU.

Its correctness checks (ZeRO-3 weight gathering, save_model, a state save and resume that continues like the
original learner) run on CPU too, so CI keeps the script that the GPU machine runs from rotting.
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_learner_gpu_benchmark_runs_its_checks_on_cpu(tmp_path):
    out = tmp_path / "learner.json"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/learner_gpu.py",
            "--quick",
            "--configs",
            "z2,z3",
            "--work-dir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["failed"] == [] and set(result["configs"]) == {"z2", "z3"}
    for name, config in result["configs"].items():
        assert config["ok"], name
        assert config["checks"] and all(config["checks"].values()), (name, config["checks"])
    # ZeRO-3 runs the checks that only matter there
    assert {"gathered_full_shapes", "save_model_equal", "load_state_weights_equal"} <= set(
        result["configs"]["z3"]["checks"]
    )
