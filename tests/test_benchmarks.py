"""Smoke test for the benchmark that only runs in full on a GPU: benchmarks/learner_gpu.py, on CPU.

Its correctness checks (ZeRO-3 weight gathering, save_model, a state save and resume that continues like the
original learner) run on CPU too, so CI keeps the script that the GPU machine runs from rotting.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
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


def test_soak_memory_growth_is_per_100_steps_after_warm_up_while_every_actor_runs():
    """benchmarks/soak.py's growth figures, worked out by hand: the first sample of the leg (step 10) and
    the ones before step 15 are warm-up; the last one (shutdown, actors gone) is left out."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from soak import growth

    def sample(step: int, uss: float, fds: int, actors: bool = True) -> dict:
        roles = ["driver", "learner", "engine"] if actors else ["driver"]
        return {"step": step, "mem": {r: {"rss": uss + 100, "uss": uss} for r in roles}, "fds": fds}

    samples = [sample(10, 50, 3), sample(15, 500, 40), sample(65, 510, 41), sample(115, 520, 41)]
    result = growth(samples + [sample(116, 900, 16, actors=False)])
    # 500 -> 520 MiB over 100 steps; the second half is samples[2] -> samples[3]: 10 MiB over 50 steps.
    assert result["engine"] == {
        "rss_mib": [600, 620],
        "uss_mib": [500, 520],
        "uss_per_100_steps_mib": 20.0,
        "uss_per_100_steps_mib_late": 20.0,
    }
    assert result["driver_fds"] == [40, 41] and result["steps"] == [15, 115]
    assert growth(samples[:2]) == {}  # too few samples past warm-up to say anything
