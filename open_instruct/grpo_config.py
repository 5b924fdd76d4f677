"""Every option of `python -m open_instruct.grpo_fast`, documented where it is defined.

Names follow Open Instruct, so its published command lines run unchanged. Flags that only mean something
on AI2's infrastructure (oe-eval jobs, Beaker, the code API) are accepted and reported once as not used.
"""

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from open_instruct.cli_utils import parse_bool
from open_instruct.judge_config import BY_NAME


def opt(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its --help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def judge_opt(name: str, more_help: str = "") -> Any:
    """A judge flag, with the default and help every judge command shares (judge_config.JUDGE_FLAGS)."""
    flag = BY_NAME[name]
    return opt(flag.default_value, flag.help + more_help)


@dataclass
class GRPOConfig:
    # ---- data
    dataset_mixer_list: list[str] = opt(
        ["data/general_chat_flip_sample.jsonl", "1.0"],
        "training mix: pairs of source (HF id or local .json/.jsonl/.parquet) and amount (fraction like 1.0, or a row count)",
    )
    dataset_mixer_list_splits: list[str] = opt(
        ["train"], "split for each source (one for all, or one per source)"
    )
    dataset_mixer_eval_list: list[str] = opt([], "evaluation mix, same syntax; empty: no separate eval set")
    dataset_mixer_eval_list_splits: list[str] = opt(["train"], "split for each eval source")
    max_prompt_token_length: int = opt(
        2048, "prompts longer than this (after the chat template) are dropped and counted"
    )
    chat_template_name: str | None = opt(
        None, "named chat template (olmo_thinker, qwen3, chatml, tulu); default: the tokenizer's own"
    )
    chat_template_kwargs: str = opt(
        "",
        "a JSON object of variables for the policy's chat template, e.g. '{\"enable_thinking\": false}' to "
        "have a Qwen3 policy answer without reasoning; empty: none (a Qwen3 template then thinks)",
    )
    # ---- model
    model_name_or_path: str = opt(
        "", "policy model: HF id or local directory (required, here or in --config)"
    )
    # ---- rollout
    vllm_num_engines: int = opt(1, "number of vLLM engines (Ray actors)")
    vllm_tensor_parallel_size: int = opt(1, "GPUs per vLLM engine")
    vllm_enable_prefix_caching: bool = opt(False, "let vLLM reuse KV cache across the samples of a prompt")
    vllm_gpu_memory_utilization: float = opt(
        0.9, "share of GPU memory a vLLM engine may take (on CPU: ignored, the KV cache is 1 GiB)"
    )
    num_samples_per_prompt_rollout: int = opt(8, "samples per prompt (the GRPO group size)")
    num_unique_prompts_rollout: int = opt(24, "prompts per training step")
    temperature: float = opt(1.0, "sampling temperature of the rollouts")
    response_length: int = opt(512, "most tokens per response")
    stop_strings: list[str] = opt([], "strings that end a response (e.g. </answer>)")
    rollout_chunks_per_engine: int = opt(
        0,
        "generate calls per engine per step; rewards of a chunk start as soon "
        "as it is back, so more chunks overlap judging with generation, at some generation cost. "
        "0: 2 when a verifier calls the judge, else 1",
    )
    # ---- reward
    verifier_modules: list[str] = opt(
        [],
        "Python modules imported before the data is read; each may register "
        "verifiers (ground_truth_utils.register_verifier) that rows then name in `dataset`, e.g. "
        "open_instruct.testing.verifiers for the word-share smoke-test verifier",
    )
    llm_judge_model: str | None = judge_opt("llm_judge_model", "; needed by general-* verifiers")
    llm_judge_api_base: str | None = judge_opt("llm_judge_api_base")
    llm_judge_timeout: float = judge_opt("llm_judge_timeout")
    llm_judge_max_tokens: int = judge_opt("llm_judge_max_tokens")
    llm_judge_max_context_length: int = judge_opt("llm_judge_max_context_length")
    llm_judge_max_concurrency: int = judge_opt("llm_judge_max_concurrency")
    llm_judge_endpoint_cooldown: float = judge_opt("llm_judge_endpoint_cooldown")
    llm_judge_retries: int = judge_opt("llm_judge_retries")
    llm_judge_temperature: float = judge_opt("llm_judge_temperature")
    llm_judge_enable_thinking: bool | None = judge_opt("llm_judge_enable_thinking")
    llm_judge_structured_output: bool = judge_opt("llm_judge_structured_output")
    flip_echo_overlap_max: float = judge_opt("flip_echo_overlap_max")
    llm_judge_on_unparsed: Literal["raw", "fail"] = opt(
        "raw",
        "judge answered but nothing parsed: raw = score its raw text (published recipe), fail = no reward",
    )
    non_stop_penalty: bool = opt(
        False, "give responses that hit response_length the penalty value instead of their reward"
    )
    non_stop_penalty_value: float = opt(
        0.0, "the reward of a response that did not stop, with --non_stop_penalty"
    )
    # ---- advantages
    advantage_normalization_type: Literal["standard", "centered"] = opt(
        "standard", "standard: (r - mean) / std per prompt group; centered: r - mean"
    )
    filter_zero_std_samples: bool = opt(
        True, "skip prompt groups whose rewards are all equal (they carry no signal)"
    )
    # ---- learner
    num_learners_per_node: list[int] = opt(
        [1],
        "DeepSpeed learners on each node, one GPU each (e.g. 8 8: 16 "
        "learners on two nodes of their own; vLLM engines go on the GPUs left); on a cluster without GPUs, gloo learners",
    )
    single_gpu_mode: bool = opt(
        False,
        "one GPU shared by the learner (half of it, in Ray's accounting) and the vLLM "
        "engines (the other half); a judge served on that GPU takes its own memory share. Needs one learner and "
        "--vllm_tensor_parallel_size 1",
    )
    deepspeed_stage: int = opt(2, "ZeRO stage, 2 or 3")
    learning_rate: float = opt(1e-6, "AdamW learning rate")
    lr_scheduler_type: Literal["constant", "linear", "cosine", "constant_with_warmup"] = opt(
        "constant", "learning-rate schedule"
    )
    warmup_ratio: float = opt(0.0, "share of updates spent warming up the learning rate")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")
    clip_lower: float = opt(0.2, "PPO clip below: ratio >= 1 - clip_lower")
    clip_higher: float = opt(0.2, "PPO clip above: ratio <= 1 + clip_higher (0.272 in the published recipe)")
    truncated_importance_sampling_ratio_cap: float = opt(
        2.0,
        "cap on exp(logp_learner - logp_vllm) weighting each "
        "token, which corrects for samples drawn from older weights (--async_steps) and for vLLM's numerics; 0: off "
        "(only with --async_steps 0)",
    )
    beta: float = opt(0.0, "KL penalty weight to the initial policy; 0 loads no reference model")
    kl_estimator: str = opt("k3", "KL estimator k1, k2 or k3 (or Open Instruct's index 0, 1, 2)")
    mask_truncated_completions: bool = opt(False, "leave responses that hit response_length out of the loss")
    num_mini_batches: int = opt(1, "optimizer updates per step")
    num_epochs: int = opt(1, "passes over each step's samples")
    per_device_train_batch_size: int = opt(
        1, "kept for compatibility: micro-batches are packed by --pack_length"
    )
    pack_length: int = opt(
        4096,
        "most tokens per micro-batch, padding included (with flash-attention samples are "
        "packed into one row without padding); at least --max_prompt_token_length + --response_length; "
        "on a GPU fewer, larger micro-batches train faster for more memory (H200, 0.3B model: 16384 took 0.97 s a "
        "step and 22 GiB, 4096 took 3.2 s and 10 GiB; benchmarks/learner_gpu.py)",
    )
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass to save memory")
    # ---- controller
    async_steps: int = opt(1, "generation may run this many steps ahead of training (0: fully on-policy)")
    inflight_updates: bool = opt(
        False,
        "push new weights into the engines between decode steps of a rollout in "
        "flight instead of after it (its later tokens then come from the newer policy; truncated importance "
        "sampling corrects for it); only matters with --async_steps > 0",
    )
    total_episodes: int = opt(
        1000, "total samples to train on; steps = total_episodes / (prompts x samples per prompt)"
    )
    seed: int = opt(1, "seed for data order, sampling and initialisation")
    output_dir: str = opt("output/grpo", "where metrics.jsonl, checkpoints and the final model go")
    save_freq: int = opt(0, "save an HF checkpoint every N steps (0: only at the end)")
    keep_last_n_checkpoints: int = opt(3, "step checkpoints kept (-1: all)")
    local_eval_every: int = opt(
        0, "every N steps, sample eval responses and write them with their rewards (0: never)"
    )
    local_eval_prompts: int = opt(16, "eval prompts per evaluation")
    eval_on_step_0: bool = opt(
        False,
        "also evaluate the initial policy before the first step (with --local_eval_every and --oe_eval_tasks)",
    )
    oe_eval_tasks: list[str] = opt(
        [],
        "downstream benchmarks run on every saved checkpoint (--save_freq, the final model) and, with "
        "--eval_on_step_0, the initial model: comma- or space-separated names of open_instruct.evaluate "
        "(ifeval, bbh_cot, gpqa_cot, minerva_math, math_500, their published oe-eval names, or tasks "
        "--eval_include_path defines). They run in the background, one at a time, as a Ray task of 1 GPU (none "
        "on a CPU cluster) that needs a GPU the learners and engines leave free (--dry_run says whether one "
        "is); results in OUTPUT_DIR/eval/downstream_step_N.json, metrics.jsonl and wandb. Empty: none",
        alias="eval_tasks",
    )
    oe_eval_max_length: int = opt(
        0, "most tokens generated per answer in the downstream evaluations (0: each task's own)"
    )
    eval_include_path: str | None = opt(
        None, "a folder of your own lm-eval task YAMLs that --oe_eval_tasks may name"
    )
    eval_wait_minutes: float = opt(
        60.0,
        "after the last step, wait at most this long for the downstream evaluations still queued "
        "(they are stopped after it, and said so)",
    )
    with_tracking: bool = opt(False, "log to wandb as well (offline when WANDB_API_KEY is unset)")
    wandb_project_name: str = opt("flip-grpo", "wandb project")
    exp_name: str = opt("grpo_flip", "run name")
    ray_address: str | None = opt(
        None, "Ray cluster to join (auto: the one this node belongs to); default: start a local one"
    )
    checkpoint_state_freq: int = opt(
        0,
        "save the full training state (model, optimizer, scheduler, step, data "
        "position, RNG) every N steps under output_dir/state, atomically; rerunning the same command resumes "
        "from the newest complete state (0: never)",
    )
    # ---- resilience
    preemption_grace_s: float = opt(
        120.0,
        "on SIGTERM (a preemption, a time limit, scancel) once training has started: seconds to finish the step "
        "in progress, save the full state of the last finished step and exit with status 75 (rerun to resume); "
        "a second SIGTERM, or the grace running out, stops at once with the previous state intact. Ask the "
        "scheduler for the signal at least this early (Slurm: --signal=B:TERM@180, as the sbatch files do)",
    )
    keep_last_n_states: int = opt(
        2,
        "complete training states kept under output_dir/state (--checkpoint_state_freq); when the newest is "
        "damaged, a resume falls back to the one before",
    )
    max_judge_failure_rate: float = opt(
        0.5,
        "stop (saving the state) when more than this share of a step's "
        "judge calls fail, instead of training on a thin batch; below it, failed samples are left out and counted",
    )
    backend_timeout: float = opt(
        120.0,
        "minutes any wait on a Ray actor, a collective or the rollout queue may "
        "take before the run stops with an error (Open Instruct's unit)",
    )
    config: str | None = opt(
        None,
        "a YAML file of flags (configs/train/grpo/*.yaml are the presets): one `flag: "
        "value` per line, flags given on the command line win; its `launch` section is for scripts/train/grpo_*.sh",
    )
    dry_run: bool = opt(
        False,
        "check flags, datasets, the judge endpoint and the Ray cluster's resources, print "
        "the plan (actors, placement, batch sizes, memory per GPU) and exit without loading a model",
    )

    @property
    def batch_size(self) -> int:
        return self.num_unique_prompts_rollout * self.num_samples_per_prompt_rollout

    @property
    def num_training_steps(self) -> int:
        return max(1, self.total_episodes // self.batch_size)

    @property
    def template_kwargs(self) -> dict[str, Any]:
        """--chat_template_kwargs parsed (validate() has checked it is a JSON object)."""
        return json.loads(self.chat_template_kwargs) if self.chat_template_kwargs.strip() else {}


# Flags from the published scripts that drive AI2's infrastructure. Accepted, reported once, not used
# (--oe_eval_tasks and --oe_eval_max_length are real fields above; the other --oe_eval_* flags are Beaker's).
INFRA_FLAG_PREFIXES = (
    "oe_eval",
    "beaker",
    "try_launch_beaker",
    "try_auto_save",
    "gs_bucket",
    "hf_entity",
    "hf_repo",
    "push_to_hub",
    "code_api_url",
    "eval_priority",
    "wandb_entity",
    "cluster",
    "budget",
    "image",
    "no_auto_dataset_cache",
    "save_traces",
    "vllm_sync_backend",
    "dataset_local_cache_dir",
    "dataset_transform_fn",
    "dataset_cache_mode",
    "add_bos",
    "apply_verifiable_reward",
    "llm_judge_hosted_vllm",
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: the usage is what --help is for."""

    def error(self, message: str):
        from open_instruct.cli_utils import UserError

        raise UserError(f"{message} (--help lists every flag)")


class _HelpFormatter(argparse.HelpFormatter):
    """Each flag's help with its default, once: not for a required flag (marked so instead), not when the
    help already says what the default does, and not for an empty one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return text + " (required)"
        default = action.default
        if default in (None, "", [], argparse.SUPPRESS) or "default" in text.lower():
            return text
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    infra = ", ".join(f"--{prefix}*" for prefix in INFRA_FLAG_PREFIXES)
    parser = _Parser(
        prog="python -m open_instruct.grpo_fast",
        usage="%(prog)s --model_name_or_path MODEL [--flag VALUE ...]",
        description="GRPO with FLIP (or LLM-judge) rewards: Ray-orchestrated vLLM rollouts, judge rewards, "
        "DeepSpeed learners. Every flag is below; the launch scripts in scripts/train/ set the published recipe.",
        epilog=f"Accepted and not used (they drive AI2's infrastructure; each is reported once): {infra}.",
        formatter_class=_HelpFormatter,
    )
    for f in dataclasses.fields(GRPOConfig):
        kw: dict[str, Any] = {"help": f.metadata["help"], "dest": f.name}
        if f.metadata.get("required"):
            kw["required"] = True
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        kind, origin = f.type, get_origin(f.type)
        if kind is bool or kind == bool | None:
            # `--flag`, `--flag true` and `--flag False` all work, as in the published scripts
            kw.update(type=parse_bool, nargs="?", const=True, default=default)
        elif origin is list:
            kw.update(nargs="*", type=get_args(kind)[0], default=default)
        elif origin is Literal:
            kw.update(choices=list(get_args(kind)), default=default)
        else:
            base = next((a for a in get_args(kind) if a is not type(None)), kind) if origin else kind
            kw.update(type=base, default=default)
        aliases = [f"--{f.metadata['alias']}"] if "alias" in f.metadata else []
        parser.add_argument(f"--{f.name}", *aliases, **kw)
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[GRPOConfig, list[str]]:
    """(config, infra flags that were given and are not used). Unknown flags are an error. With --config, the
    file's values are the defaults the command line overrides."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.config:
        parser.set_defaults(**read_config(args.config))
        args, unknown = parser.parse_known_args(argv)
    ignored, bad = [], []
    for token in unknown:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            (ignored if name.startswith(INFRA_FLAG_PREFIXES) else bad).append(name)
    if bad:
        parser.error(f"unknown flag(s): {', '.join('--' + b for b in bad)}")
    cfg = GRPOConfig(**vars(args))
    problems = validate(cfg)
    if problems:
        parser.error("; ".join(problems))
    return cfg, ignored


# --------------------------------------------------------------------------------------------------
# Config files


def read_config(path: str) -> dict[str, Any]:
    """The flags of a YAML config file, checked against GRPOConfig: an unknown key or a value of the wrong
    type is a UserError naming the file and the key. The `launch` section is the launch scripts' and is
    left out."""
    import yaml

    from open_instruct.cli_utils import UserError, first_line

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"--config {path}: cannot read it ({first_line(e)})") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({first_line(e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file is a mapping of flag: value")
    fields = {f.name: f for f in dataclasses.fields(GRPOConfig)}
    values = {}
    aliases = {f.metadata["alias"]: name for name, f in fields.items() if "alias" in f.metadata}
    for key, value in data.items():
        if key == "launch":
            continue
        key = aliases.get(key, key)
        if key not in fields or key in ("config", "dry_run"):
            raise UserError(f"{path}: unknown key {key!r} (keys are the trainer's flags without the --)")
        problem = _type_problem(fields[key].type, value)
        if problem:
            raise UserError(f"{path}: {key}: {problem}, got {value!r}")
        values[key] = value
    return values


def _type_problem(kind: Any, value: Any) -> str | None:
    """Why `value` (from YAML) does not fit the field type `kind`, or None."""
    origin, args = get_origin(kind), get_args(kind)
    if origin is list:
        if not isinstance(value, list):
            return "expected a list"
        inner = [_type_problem(args[0], v) for v in value]
        return next((f"every item: {p}" for p in inner if p), None)
    if origin is Literal:
        return None if value in args else f"expected one of {', '.join(map(str, args))}"
    if origin is not None:  # X | None
        if value is None and type(None) in args:
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if kind is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected a whole number"
    if kind is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "expected a number"
    return None if isinstance(value, str) else "expected a string"


def launch_settings(path: str, judge_type: str) -> dict[str, str]:
    """What scripts/train/grpo_<judge_type>.sh reads from a preset's `launch` section, as shell variables."""
    import yaml

    launch = (yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}).get("launch") or {}
    data = launch.get("data") or {}
    return {
        "PRESET_DATA": str(data.get(judge_type, "")),
        "PRESET_JUDGE_SERVE_MODEL": str(launch.get("judge_serve_model", "")),
        "PRESET_JUDGE_VLLM_ARGS": str(launch.get("judge_vllm_args", "")),
        "PRESET_WORLD": str(launch.get("world", "")),
    }


def validate(cfg: GRPOConfig) -> list[str]:
    checks = [
        (
            bool(cfg.model_name_or_path),
            "--model_name_or_path is required (on the command line or in --config)",
        ),
        (len(cfg.dataset_mixer_list) >= 2, "--dataset_mixer_list needs pairs of source and amount"),
        (
            cfg.num_samples_per_prompt_rollout >= 2,
            "--num_samples_per_prompt_rollout must be at least 2 (GRPO compares samples)",
        ),
        (cfg.num_unique_prompts_rollout >= 1, "--num_unique_prompts_rollout must be at least 1"),
        (cfg.response_length >= 1, "--response_length must be positive"),
        (cfg.deepspeed_stage in (2, 3), "--deepspeed_stage must be 2 or 3"),
        (cfg.async_steps >= 0, "--async_steps must be 0 or more"),
        (cfg.rollout_chunks_per_engine >= 0, "--rollout_chunks_per_engine must be 0 or more"),
        (cfg.vllm_num_engines >= 1, "--vllm_num_engines must be at least 1"),
        (
            all(n >= 1 for n in cfg.num_learners_per_node),
            "--num_learners_per_node entries must be at least 1",
        ),
        (
            cfg.num_mini_batches >= 1 and cfg.num_epochs >= 1,
            "--num_mini_batches and --num_epochs must be at least 1",
        ),
        (
            cfg.pack_length >= cfg.max_prompt_token_length + cfg.response_length,
            f"--pack_length ({cfg.pack_length}) must be at least --max_prompt_token_length + --response_length "
            f"({cfg.max_prompt_token_length + cfg.response_length}): a micro-batch must hold the longest sample",
        ),
        (
            not cfg.single_gpu_mode
            or (sum(cfg.num_learners_per_node) == 1 and cfg.vllm_tensor_parallel_size == 1),
            "--single_gpu_mode needs one learner (--num_learners_per_node 1) and --vllm_tensor_parallel_size 1",
        ),
        (cfg.clip_lower >= 0 and cfg.clip_higher >= 0, "--clip_lower and --clip_higher must be >= 0"),
        (0.0 <= cfg.max_judge_failure_rate <= 1.0, "--max_judge_failure_rate must be between 0 and 1"),
        (cfg.backend_timeout > 0, "--backend_timeout must be positive (minutes)"),
        (
            cfg.truncated_importance_sampling_ratio_cap > 0 or cfg.async_steps == 0,
            f"--async_steps {cfg.async_steps} trains on samples from weights up to {cfg.async_steps} update(s) old, which "
            "needs the importance correction: keep --truncated_importance_sampling_ratio_cap above 0 (the default and "
            "the published recipe's is 2.0) or train on-policy with --async_steps 0",
        ),
        (cfg.checkpoint_state_freq >= 0, "--checkpoint_state_freq must be 0 or more"),
        (cfg.preemption_grace_s > 0, "--preemption_grace_s must be positive (seconds)"),
        (cfg.keep_last_n_states >= 1, "--keep_last_n_states must be at least 1"),
        (
            cfg.total_episodes >= cfg.batch_size,
            f"--total_episodes ({cfg.total_episodes}) is less than one step ({cfg.batch_size} samples)",
        ),
    ]
    return [msg for ok, msg in checks if not ok] + template_kwargs_problems(cfg) + eval_problems(cfg)


def template_kwargs_problems(cfg: GRPOConfig) -> list[str]:
    try:
        if isinstance(cfg.template_kwargs, dict):
            return []
    except json.JSONDecodeError as e:
        return [f"--chat_template_kwargs is not JSON ({e.msg} at character {e.pos + 1})"]
    return ["--chat_template_kwargs must be a JSON object like '{\"enable_thinking\": false}'"]


def eval_problems(cfg: GRPOConfig) -> list[str]:
    """The downstream-evaluation flags' mistakes: an unknown task name (without --eval_include_path, which
    may define more; the evaluation checks those), a missing folder, lm-eval not installed."""
    from importlib.util import find_spec

    from open_instruct.cli_utils import UserError
    from open_instruct.evaluation.downstream_tasks import resolve, split_names

    if not cfg.oe_eval_tasks:
        return []
    problems = []
    if cfg.eval_include_path is None:
        try:
            resolve(
                split_names(cfg.oe_eval_tasks), flag="--oe_eval_tasks", include_flag="--eval_include_path"
            )
        except UserError as e:
            problems.append(str(e))
    elif not Path(cfg.eval_include_path).is_dir():
        problems.append(f"--eval_include_path {cfg.eval_include_path}: no such folder")
    if find_spec("lm_eval") is None:
        problems.append("--oe_eval_tasks needs lm-eval: pip install 'lm-eval[ifeval,math]'")
    if cfg.oe_eval_max_length < 0 or cfg.eval_wait_minutes < 0:
        problems.append("--oe_eval_max_length and --eval_wait_minutes must be 0 or more")
    return problems


if __name__ == "__main__":
    # `--launch_settings FILE JUDGE_TYPE`: a preset's launch section as shell assignments (scripts/train/);
    # otherwise the flags and their defaults.
    if sys.argv[1:2] == ["--launch_settings"]:
        import shlex

        for name, value in launch_settings(sys.argv[2], sys.argv[3]).items():
            print(f"{name}={shlex.quote(value)}")
    else:
        build_parser().print_help(sys.stdout)
