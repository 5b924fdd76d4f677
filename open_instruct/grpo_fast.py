"""GRPO with FLIP (or LLM-judge) rewards: the single controller that drives every role.

    python -m open_instruct.grpo_fast --model_name_or_path M --dataset_mixer_list data.jsonl 1.0 \
        --llm_judge_model hosted_vllm/Qwen/Qwen3-4B ...      (see --help, or scripts/train/grpo_flip.sh)

Before the first step: the inputs are read and checked (run_inputs.py), the actors placed (cluster.py).
One step:
  1. rollout   the step's prompts go to the vLLM engines (vllm_utils.py) in chunks; each chunk's samples
               are sent to the reward role as soon as the chunk is back (rollouts.py);
  2. reward    each sample is scored by the verifier its row names (rewards.py); a failed judge call
               gives no reward and the sample is left out, never trained on as 0;
  3. advantage group-normalised per prompt (rl_utils.group_advantages);
  4. train     the step is packed so every DeepSpeed learner runs the same number of micro-batches
               (packing.py) and the learners update (learner.py);
  5. sync      the learners' weights go to every vLLM engine (weight_sync.py).
With --async_steps k, rollouts for step s start once the weights of step s-1-k are in the engines, in a
producer thread, so generation runs up to k steps ahead of training; a step's judging goes on while the
next step generates.

Surviving: with --checkpoint_state_freq N the full state is saved every N steps (train_state.py) and the
same command resumes from it; on SIGTERM (a preemption) the state of the last finished step is saved and the
run exits with status 75 (stop_signals.py). A step where more than --max_judge_failure_rate of the judge calls failed
stops the run (state saved) instead of training on what is left. Every wait on an actor has a timeout
(--backend_timeout), and an actor that dies ends the run with one line saying what to do.
"""

import asyncio
import concurrent.futures
import contextlib
import json
import math
import os
import queue
import re
import shutil
import statistics
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

from open_instruct import downstream_eval, train_state
from open_instruct.cli_utils import Preempted, RunFailure, UserError, first_line, run_command
from open_instruct.grpo_config import GRPOConfig, parse_args
from open_instruct.rollouts import AsyncRunner, Rollout, rollout_and_score
from open_instruct.run_lock import RunLock
from open_instruct.stop_signals import STOP
from open_instruct.train_metrics import MetricsLog, plot, step_metrics
from open_instruct.train_state import PromptSampler

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


# --------------------------------------------------------------------------------------------------
# Actors

ACTOR_ROLES = {"LLMRayActor": "a vLLM engine", "PolicyLearner": "a learner"}


@contextlib.contextmanager
def actor_errors(what: str, cfg: GRPOConfig):
    """Turn an actor that died, or a wait past --backend_timeout, into one line that says what to do."""
    from ray.exceptions import RayActorError, RayTaskError

    if cfg.checkpoint_state_freq:
        hint = f"rerun the same command to resume from the newest state in {Path(cfg.output_dir) / 'state'}"
    else:
        hint = "no training state is saved (--checkpoint_state_freq 0), so a rerun starts over"
    try:
        yield
    except TimeoutError as e:  # ray.get's GetTimeoutError, asyncio.wait_for, the rollout queue
        raise RunFailure(
            f"{what}: no answer within --backend_timeout {cfg.backend_timeout:g} min "
            f"({first_line(e) if str(e) else 'timed out'}); {hint}"
        ) from None
    except (RayActorError, RayTaskError) as e:
        dead = e if isinstance(e, RayActorError) else getattr(e, "cause", None)
        if not isinstance(dead, RayActorError):
            raise  # an error inside an actor's method: a bug, with its traceback
        found = re.search(r"class_name: (\w+)", str(dead))
        who = ACTOR_ROLES.get(found.group(1), found.group(1)) if found else "an actor"
        raise RunFailure(f"{what}: {who} died ({type(dead).__name__}); {hint}") from None


def learner_config(cfg: GRPOConfig, total_steps: int):
    from open_instruct.learner import LearnerConfig
    from open_instruct.rl_utils import LossConfig, parse_kl_estimator

    return LearnerConfig(
        model_name_or_path=cfg.model_name_or_path,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_ratio=cfg.warmup_ratio,
        total_steps=total_steps,
        max_grad_norm=cfg.max_grad_norm,
        deepspeed_stage=cfg.deepspeed_stage,
        gradient_checkpointing=cfg.gradient_checkpointing,
        pack_length=cfg.pack_length,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        num_mini_batches=cfg.num_mini_batches,
        num_epochs=cfg.num_epochs,
        temperature=cfg.temperature,
        seed=cfg.seed,
        backend_timeout=cfg.backend_timeout * 60,
        loss=LossConfig(
            clip_lower=cfg.clip_lower,
            clip_higher=cfg.clip_higher,
            tis_cap=cfg.truncated_importance_sampling_ratio_cap,
            beta=cfg.beta,
            kl_estimator=parse_kl_estimator(cfg.kl_estimator),
        ),
    )


# --------------------------------------------------------------------------------------------------
# Controller


class Trainer:
    def __init__(self, cfg: GRPOConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.evals: downstream_eval.DownstreamEvals | None = (
            None  # with --oe_eval_tasks, once training starts
        )

    def setup(self, problems: list[str] | None = None) -> None:
        """Read what the run needs before any model or actor starts (run_inputs.read_inputs): a mistake raises
        UserError, or with `problems` (the dry run) is added to it as a line."""
        from open_instruct.run_inputs import read_inputs

        inputs = read_inputs(self.cfg, problems)
        self.tokenizer, self.chat_template = inputs.tokenizer, inputs.chat_template
        self.prompts, self.eval_prompts = inputs.prompts, inputs.eval_prompts
        self.judge, self.rewards = inputs.judge, inputs.rewards

    def start_actors(self) -> None:
        import ray

        from open_instruct import cluster, vllm_utils, weight_sync

        cfg = self.cfg
        where = cluster.init_ray(cfg)
        STOP.install()
        plan, nodes, shortfall = cluster.plan_for_cluster(cfg)
        self.on_gpu = plan.on_gpu
        shortfall = shortfall or downstream_eval.no_gpu_left(cfg, plan, sum(n.gpus for n in nodes))
        if shortfall:
            raise UserError(f"{shortfall} ({where})")
        self.steps = cfg.num_training_steps
        t0 = time.perf_counter()
        with actor_errors("starting the vLLM engines and learners", cfg):
            self.placement = cluster.Placement(plan, timeout=self.timeout)
            # The engines load while the learners start, except on a shared GPU: vLLM sizes its KV cache from
            # the memory free when it starts, so there it must be up before a learner takes its share.
            self.engines = vllm_utils.create_vllm_engines(
                num_engines=cfg.vllm_num_engines,
                tensor_parallel_size=cfg.vllm_tensor_parallel_size,
                model_path=cfg.model_name_or_path,
                seed=cfg.seed,
                max_model_len=cfg.max_prompt_token_length + cfg.response_length,
                enable_prefix_caching=cfg.vllm_enable_prefix_caching,
                gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
                inflight_updates=cfg.inflight_updates,
                actor_options=[self.placement.engine_options(i) for i in range(cfg.vllm_num_engines)],
                wait=plan.shared,
                timeout=self.timeout,
            )
            busy = (
                cfg.vllm_num_engines if cfg.async_steps > 0 else 0
            )  # engines generating while learners train
            self.learners, reports = cluster.create_learners(
                self.placement, learner_config(cfg, self.steps), busy, self.timeout
            )
            self.packed_rows = reports[0]["packed_rows"]  # how the learners want micro-batches laid out
            ray.get([e.ready.remote() for e in self.engines], timeout=self.timeout)
            model_class = ray.get(self.engines[0].model_class.remote(), timeout=self.timeout)
            weight_sync.init_weight_sync(self.learners, self.engines, timeout=self.timeout)
        print(
            f"actors: {len(self.engines)} vLLM engine(s) running {model_class}, {len(self.learners)} learner(s) "
            f"on {len(nodes)} node(s), ready in {time.perf_counter() - t0:.0f}s; learner rendezvous "
            f"{reports[0]['rendezvous']}"
        )
        for line in self.placement.describe():
            print(f"  {line}")

    @property
    def timeout(self) -> float:
        """--backend_timeout in seconds."""
        return self.cfg.backend_timeout * 60

    # ----------------------------------------------------------------------------------------------
    def resume(self) -> tuple[int, dict | None, str | None]:
        """Load the newest complete state, if any: (first step to run, sampler state, wandb run id)."""
        import ray

        from open_instruct import weight_sync

        found = train_state.latest(self.out)
        if found is None:
            return 1, None, None
        path, state = found
        problem = train_state.check_identity(state.identity, asdict(self.cfg))
        if problem:
            raise UserError(f"{path}: {problem}")
        with actor_errors(f"loading the saved state {path}", self.cfg):
            ray.get(
                [lr.load_state.remote(str(path / "learner")) for lr in self.learners], timeout=self.timeout
            )
            weight_sync.sync_weights(self.learners, self.engines, version=state.step, timeout=self.timeout)
        print(f"resuming from step {state.step} ({path}); {self.steps - state.step} step(s) to go")
        return state.step + 1, state.sampler, state.wandb_run_id

    def save_state(self, step: int, sampler_state: dict, wandb_run_id: str | None) -> Path:
        """The full training state after `step`, written atomically (train_state.py)."""
        import ray
        from ray.exceptions import RayTaskError

        tmp = train_state.begin(self.out, step)
        with actor_errors(f"saving the state of step {step}", self.cfg):
            try:
                ray.get(
                    [lr.save_state.remote(str(tmp / "learner")) for lr in self.learners], timeout=self.timeout
                )
            except RayTaskError as e:  # a learner could not write its shard: most often a full disk
                if not isinstance(getattr(e, "cause", None), OSError):
                    raise
                raise train_state.save_failed(
                    train_state.state_root(self.out), tmp, step, first_line(e.cause)
                ) from None
        config = asdict(self.cfg)
        identity = {k: config[k] for k in train_state.IDENTITY_FLAGS}
        return train_state.commit(
            self.out,
            tmp,
            train_state.TrainerState(step, sampler_state, identity, wandb_run_id),
            keep=self.cfg.keep_last_n_states,
        )

    def check_judge_health(self, ro: Rollout) -> str | None:
        """A one-line reason to stop when too many of this step's judge calls failed, else None."""
        flat = [r for group in ro.results for r in group]
        failed = [r for r in flat if not r.judge_ok]
        if not failed or len(failed) <= self.cfg.max_judge_failure_rate * len(flat):
            return None
        endpoint = self.judge.endpoint if self.judge is not None else "the judge"
        return (
            f"judge {endpoint}: {len(failed)} of {len(flat)} judge calls failed at step {ro.step} "
            f"(more than --max_judge_failure_rate {self.cfg.max_judge_failure_rate:g}); "
            f"first error: {failed[0].error}"
        )

    # ----------------------------------------------------------------------------------------------
    def learn(self, ro: Rollout) -> tuple:
        """Advantages per prompt group, one update of the learners on the samples kept, and the weight sync
        to the engines: (advantages, learner stats, training seconds, sync seconds)."""
        import ray

        from open_instruct import weight_sync
        from open_instruct.packing import Sample, plan_step
        from open_instruct.rl_utils import group_advantages

        cfg = self.cfg
        scores = [r.score for group in ro.results for r in group]
        adv = group_advantages(
            scores,
            cfg.num_samples_per_prompt_rollout,
            "mean_std" if cfg.advantage_normalization_type == "standard" else "mean",
            keep_zero_std=not cfg.filter_zero_std_samples,
        )
        samples = []
        flat = [(p, c) for p, group in zip(ro.prompts, ro.completions, strict=True) for c in group]
        for k, (p, c) in enumerate(flat):
            if cfg.mask_truncated_completions and c["finish_reason"] != "stop":
                adv.keep[k] = False
            if adv.keep[k] and c["token_ids"]:
                samples.append(
                    Sample(p.prompt_token_ids, c["token_ids"], c["logprobs"], float(adv.values[k]))
                )
        if not samples:
            return adv, [], 0.0, 0.0
        with actor_errors(f"training step {ro.step}", cfg):
            t0 = time.perf_counter()
            batches = plan_step(
                samples, len(self.learners), cfg.num_mini_batches, cfg.pack_length, self.packed_rows
            )
            train_stats = ray.get(
                [lr.train.remote(b) for lr, b in zip(self.learners, batches, strict=True)],
                timeout=self.timeout,
            )
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            weight_sync.sync_weights(self.learners, self.engines, version=ro.step, timeout=self.timeout)
        return adv, train_stats, train_s, time.perf_counter() - t0

    def train(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        start_step, sampler_state, wandb_id = self.resume()
        log = MetricsLog(cfg, self.out, start_step - 1 if sampler_state else None, wandb_id)
        self.runner = AsyncRunner()
        sampler = PromptSampler(self.prompts, cfg.seed)
        if sampler_state:
            sampler.load(sampler_state)
        n = cfg.num_samples_per_prompt_rollout
        synced = {"version": start_step - 1}
        saved_step = start_step - 1  # the newest state on disk
        cond = threading.Condition()
        batches: queue.Queue = queue.Queue(maxsize=max(cfg.async_steps, 1))
        stop = threading.Event()

        def produce() -> None:
            """Hands over each step's rollout as soon as it is generated; its judging goes on in the reward
            loop while the next step generates (once the weights allow), so a slow judge and the engines
            work at the same time. The trainer waits for the rewards (next_rollout)."""
            try:
                for step in range(start_step, self.steps + 1):
                    with cond:  # rollouts for `step` may use weights at most `async_steps` updates old
                        cond.wait_for(
                            lambda s=step: synced["version"] >= s - 1 - cfg.async_steps or stop.is_set()
                        )
                    if stop.is_set():
                        return
                    prompts = sampler.take(cfg.num_unique_prompts_rollout)
                    position = sampler.state()
                    generated = threading.Event()
                    scored = asyncio.run_coroutine_threadsafe(
                        rollout_and_score(
                            self.engines,
                            prompts,
                            self.rewards,
                            cfg,
                            n,
                            f"{cfg.seed}/train/{step}",
                            on_generated=lambda g=generated: g.set(),
                        ),
                        self.runner.loop,
                    )
                    while not (generated.wait(0.2) or scored.done() or stop.is_set()):
                        pass
                    batches.put((step, prompts, scored, position))
            except BaseException as e:  # noqa: BLE001  (handed to the training loop, which re-raises)
                batches.put(e)

        self.evals = downstream_eval.for_run(cfg, self.out, self.on_gpu)  # None without --oe_eval_tasks
        if cfg.eval_on_step_0 and start_step == 1:
            if cfg.local_eval_every:
                self.evaluate(0)  # the initial policy, before the producer starts drawing rollouts
            if self.evals:
                self.evals.submit(0, cfg.model_name_or_path)
        producer = threading.Thread(target=produce, name="rollout-producer", daemon=True)
        producer.start()
        bar = tqdm(
            range(start_step, self.steps + 1),
            desc="GRPO",
            unit="step",
            dynamic_ncols=True,
            initial=start_step - 1,
            total=self.steps,
        )
        last_position = sampler_state

        def preempted(done: int) -> Preempted:
            """Stop on SIGTERM after step `done`, with its state saved (unless it is on disk already)."""
            nonlocal saved_step
            if done > saved_step and last_position is not None:
                self.save_state(done, last_position, log.wandb_run_id)
                saved_step = done
            if not saved_step:
                return Preempted(
                    "SIGTERM before the first step finished: nothing to save; rerun to start over"
                )
            path = train_state.state_root(self.out) / f"step_{saved_step}"
            return Preempted(
                f"SIGTERM: the state of step {saved_step} is in {path}; rerun the same command to resume"
            )

        def next_rollout(step: int) -> Rollout | None:
            """The rollout of `step` once it is scored, or None when a stop was asked for while waiting."""
            deadline = time.monotonic() + self.timeout
            item = None
            while not STOP.requested.is_set():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no rollout within {self.timeout:.0f}s")
                if item is None:
                    try:
                        item = batches.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    if isinstance(item, BaseException):
                        raise item
                got, prompts, scored, position = item
                if not concurrent.futures.wait([scored], timeout=0.5).done:
                    continue
                comps, results, gen_s, rew_s = scored.result()  # re-raises what the rollout raised
                return Rollout(got, prompts, comps, results, gen_s, rew_s, position)
            return None

        STOP.arm(cfg.preemption_grace_s)
        try:
            for step in bar:
                step_start = time.perf_counter()
                with actor_errors(f"generating and scoring step {step}", cfg):
                    ro = next_rollout(step)
                if ro is None:
                    raise preempted(step - 1)
                outage = self.check_judge_health(ro)
                if outage:
                    if step - 1 > saved_step and last_position is not None:  # keep what was trained
                        self.save_state(step - 1, last_position, log.wandb_run_id)
                        saved_step = step - 1
                    where = f"newest saved state: step {saved_step}" if saved_step else "nothing trained yet"
                    raise RunFailure(
                        f"{outage}. Stopped without training on the rest ({where}); "
                        "rerun the same command to resume once the judge is back"
                    )
                adv, train_stats, train_s, sync_s = self.learn(ro)
                with cond:
                    synced["version"] = step
                    cond.notify_all()
                last_position = ro.sampler_state
                metrics = step_metrics(
                    ro, adv, train_stats, sync_s, train_s, time.perf_counter() - step_start
                )
                metrics["episodes"] = step * cfg.batch_size
                metrics["epoch"] = ro.sampler_state["epoch"]
                log.log(metrics, ro)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", loss=f"{metrics['loss']:.4f}")
                if cfg.checkpoint_state_freq and step % cfg.checkpoint_state_freq == 0:
                    self.save_state(step, ro.sampler_state, log.wandb_run_id)
                    saved_step = step
                if STOP.requested.is_set():
                    raise preempted(step)
                if cfg.save_freq and step % cfg.save_freq == 0 and step < self.steps:
                    self.save(self.out / "checkpoints" / f"step_{step}")
                    if self.evals:
                        self.evals.submit(step, self.out / "checkpoints" / f"step_{step}")
                for row in self.evals.finished() if self.evals else []:
                    log.log_downstream(row)
                if cfg.local_eval_every and step % cfg.local_eval_every == 0:
                    self.evaluate(step)
        except BaseException:
            log.close()
            raise
        finally:
            STOP.disarm()
            stop.set()
            with cond:
                cond.notify_all()
            bar.close()
            while not batches.empty():  # unblock a producer waiting to hand over a batch
                batches.get_nowait()
            producer.join(timeout=10)  # a rollout in flight may finish before the loop closes
            self.runner.close()
        self.save(self.out)
        if self.evals:  # the final model too, then the queue's end (at most --eval_wait_minutes)
            self.evals.finish(log, self.steps, self.out, self.cfg.eval_wait_minutes)
        log.close()
        plot(log.history, self.out / "training_curves.png")
        return self.summary(log.history)

    # ----------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        import ray

        with actor_errors(f"saving the model to {path}", self.cfg):
            ray.get(
                [lr.save_model.remote(str(path), self.chat_template) for lr in self.learners],
                timeout=self.timeout,
            )
        if path != self.out:
            self._prune_checkpoints()

    def _prune_checkpoints(self) -> None:
        keep = self.cfg.keep_last_n_checkpoints
        ckpts = sorted((self.out / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        in_use = self.evals.in_use() if self.evals else set()
        for old in ckpts[:-keep] if keep > 0 else []:
            if str(old.resolve()) not in in_use:  # a queued evaluation still needs it: pruned later
                shutil.rmtree(old, ignore_errors=True)

    def evaluate(self, step: int) -> None:
        prompts = self.eval_prompts or self.prompts
        prompts = prompts[: self.cfg.local_eval_prompts]
        comps, results, _, _ = self.runner.run(
            rollout_and_score(
                self.engines, prompts, self.rewards, self.cfg, 1, f"{self.cfg.seed}/eval/{step}"
            )
        )
        path = self.out / "eval" / f"step_{step}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for p, c, r in zip(prompts, comps, results, strict=True):
                f.write(
                    json.dumps(
                        {
                            "messages": p.messages,
                            "response": c[0]["text"],
                            "reward": r[0].score,
                            "inferred_instruction": r[0].extracted,
                            "judge_ok": r[0].judge_ok,
                            "parsed": r[0].parsed,
                            "error": r[0].error,
                            "judge_output": r[0].judge_output,
                        }
                    )
                    + "\n"
                )

    def summary(self, history: list[dict]) -> dict:
        rewards = [m["reward_mean"] for m in history if not math.isnan(m["reward_mean"])]
        total = {
            k: sum(m[k] for m in history)
            for k in ("time/generation", "time/reward", "time/training", "time/weight_sync", "time/step")
        }
        k = min(3, len(rewards) // 2) or 1  # mean of the first and last (up to) 3 steps: one step is noisy
        return {
            "steps": len(history),
            "reward_steps_averaged": k,
            "reward_first": statistics.fmean(rewards[:k]) if rewards else float("nan"),
            "reward_last": statistics.fmean(rewards[-k:]) if rewards else float("nan"),
            "judge_answers": sum(m.get("judge_answers", 0) for m in history),
            "judge_failures": sum(m["judge_failures"] for m in history),
            "unparsed": sum(m["unparsed"] for m in history),
            **total,
        }


def print_summary(cfg: GRPOConfig, s: dict) -> None:
    t = s["time/step"] or 1.0
    print(
        f"\ntrained {s['steps']} steps -> {cfg.output_dir}\n"
        f"  reward {s['reward_first']:.4f} (mean of the first {s['reward_steps_averaged']} steps) -> "
        f"{s['reward_last']:.4f} (the last {s['reward_steps_averaged']})\n"
        f"  judge failures {s['judge_failures']}, unparsed {s['unparsed']} of {s['judge_answers']} answers\n"
        f"  time {t:.0f}s: generation {s['time/generation']:.0f}s, reward (exposed) {s['time/reward']:.0f}s, "
        f"training {s['time/training']:.0f}s, weight sync {s['time/weight_sync']:.0f}s\n"
        f"  metrics: {Path(cfg.output_dir) / 'metrics.jsonl'} (curves: training_curves.png); final model: {cfg.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    STOP.install()

    def body() -> int:
        cfg, ignored = parse_args(argv)  # a flag mistake is a UserError: one line, exit 2
        if ignored:
            print(
                f"note: not used on this stack (AI2 infrastructure flags): {', '.join('--' + f for f in ignored)}"
            )
        trainer = Trainer(cfg)
        if cfg.dry_run:  # every problem, one line each; no server, no weights, no actor
            from open_instruct import dry_run

            problems: list[str] = []
            trainer.setup(problems)
            return dry_run.run(cfg, trainer, problems)
        trainer.setup()  # data and flags are checked before any model or actor starts
        with RunLock(cfg.output_dir):  # one run per output directory
            trainer.start_actors()
            print_summary(cfg, trainer.train())
        return 0

    try:
        return run_command(body)
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
