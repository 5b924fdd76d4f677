"""The benchmarks' own arithmetic (benchmarks/*.py), worked out by hand. The smoke run of
benchmarks/learner_gpu.py on CPU is in tests/e2e/test_learner_gpu_benchmark.py."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
