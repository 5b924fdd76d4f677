"""Flags of `grpo_fast`: the published recipe parses, infra flags are reported, mistakes are usage errors."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from open_instruct.grpo_config import GRPOConfig, parse_args, template_kwargs_problems

REPO = Path(__file__).resolve().parent.parent

PAPER = """--model_name_or_path allenai/Olmo-3-7B-Think-DPO --dataset_mixer_list yikeee/rlvr_general_chat_flip 1.0
 --beta 0.0 --async_steps 1 --truncated_importance_sampling_ratio_cap 2.0 --num_samples_per_prompt_rollout 8
 --num_unique_prompts_rollout 24 --num_mini_batches 1 --num_epochs 1 --learning_rate 1e-6
 --per_device_train_batch_size 1 --kl_estimator 2 --max_prompt_token_length 2048 --response_length 16384
 --pack_length 18432 --chat_template_name olmo_thinker --stop_strings </answer> --non_stop_penalty False
 --temperature 1.0 --total_episodes 10000000 --deepspeed_stage 3 --num_learners_per_node 8
 --vllm_num_engines 16 --vllm_tensor_parallel_size 1 --llm_judge_model hosted_vllm/Qwen/Qwen3-4B
 --llm_judge_timeout 3600 --llm_judge_max_tokens 2048 --llm_judge_max_context_length 25000
 --lr_scheduler_type constant --seed 1 --local_eval_every 50 --save_freq 50 --checkpoint_state_freq 50
 --gradient_checkpointing --vllm_enable_prefix_caching --clip_higher 0.272 --mask_truncated_completions True
 --with_tracking --oe_eval_tasks minerva_math,ifeval --try_launch_beaker_eval_jobs_on_weka True --beaker_image x/y"""


# The trainer's flags of the published scripts/train/grpo_flip.sh (yikee/FLIP, open-instruct/), verbatim, with
# its shell variables as that script sets them.
PUBLISHED = """--exp_name grpo_general_flip_think_4b --beta 0.0 --async_steps 1 --truncated_importance_sampling_ratio_cap 2.0
 --num_samples_per_prompt_rollout 8 --num_unique_prompts_rollout 24 --num_mini_batches 1 --num_epochs 1
 --learning_rate 1e-6 --per_device_train_batch_size 1 --kl_estimator 2
 --dataset_mixer_list yikeee/rlvr_general_chat_flip 1.0 --dataset_mixer_list_splits train
 --dataset_mixer_eval_list yikeee/rlvr_general_chat_flip 8 --dataset_mixer_eval_list_splits train
 --max_prompt_token_length 2048 --response_length 16384 --pack_length 18432
 --model_name_or_path allenai/Olmo-3-7B-Think-DPO --chat_template_name olmo_thinker --stop_strings "</answer>"
 --non_stop_penalty False --temperature 1.0 --total_episodes 10000000 --deepspeed_stage 3 --num_learners_per_node 8
 --backend_timeout 3600 --vllm_num_engines 16 --vllm_tensor_parallel_size 1 --llm_judge_model hosted_vllm/Qwen/Qwen3-4B
 --llm_judge_timeout 3600 --llm_judge_max_tokens 2048 --llm_judge_max_context_length 25000
 --lr_scheduler_type constant --apply_verifiable_reward true --seed 1 --local_eval_every 50 --save_freq 50
 --checkpoint_state_freq 50 --gradient_checkpointing --with_tracking --vllm_enable_prefix_caching --clip_higher 0.272
 --keep_last_n_checkpoints -1 --mask_truncated_completions True --oe_eval_max_length 16384
 --code_api_url https://p9f1719l7f.execute-api.us-west-2.amazonaws.com/prod/test_program
 --try_launch_beaker_eval_jobs_on_weka True
 --oe_eval_tasks ifeval::hamish_zs_reasoning_deepseek,bbh:cot::hamish_zs_reasoning_deepseek_v2,gpqa:0shot_cot::hamish_zs_reasoning_deepseek,minerva_math::hamish_zs_reasoning_deepseek,minerva_math_500::hamish_zs_reasoning_deepseek
 --eval_on_step_0 True --oe_eval_beaker_image oe-eval-beaker/oe_eval_auto
 --output_dir /output/olmo3-7b-rlzero-general/checkpoints"""


def test_the_published_command_line_parses_verbatim():
    """Failed before: `unknown flag(s): --eval_on_step_0`, after 65 lines of usage."""
    cfg, ignored = parse_args(shlex.split(PUBLISHED))
    assert cfg.eval_on_step_0 is True and cfg.backend_timeout == 3600 and cfg.keep_last_n_checkpoints == -1
    assert cfg.dataset_mixer_eval_list == ["yikeee/rlvr_general_chat_flip", "8"] and cfg.stop_strings == [
        "</answer>"
    ]
    assert ignored == [
        "apply_verifiable_reward",
        "code_api_url",
        "try_launch_beaker_eval_jobs_on_weka",
        "oe_eval_beaker_image",
    ]
    # the downstream evaluations are real here (open_instruct/downstream_eval.py)
    assert cfg.oe_eval_max_length == 16384 and len(cfg.oe_eval_tasks) == 1
    assert cfg.oe_eval_tasks[0].startswith("ifeval::hamish_zs_reasoning_deepseek,bbh:cot::")


def test_published_recipe_parses_to_its_values():
    cfg, ignored = parse_args(shlex.split(PAPER))
    assert cfg.num_learners_per_node == [8] and cfg.vllm_num_engines == 16
    assert cfg.stop_strings == ["</answer>"] and cfg.non_stop_penalty is False
    assert cfg.mask_truncated_completions is True and cfg.gradient_checkpointing is True
    assert cfg.clip_higher == 0.272 and cfg.truncated_importance_sampling_ratio_cap == 2.0
    assert cfg.kl_estimator == "2" and cfg.deepspeed_stage == 3 and cfg.learning_rate == 1e-6
    assert cfg.batch_size == 24 * 8 and cfg.num_training_steps == 10_000_000 // 192
    assert ignored == ["try_launch_beaker_eval_jobs_on_weka", "beaker_image"]
    assert cfg.oe_eval_tasks == ["minerva_math,ifeval"]


def test_defaults_are_sane():
    cfg, _ = parse_args(["--model_name_or_path", "m"])
    assert isinstance(cfg, GRPOConfig) and cfg.clip_lower == 0.2 and cfg.beta == 0.0
    # failed before: asynchronous generation by default with no importance correction
    assert cfg.async_steps == 1 and cfg.truncated_importance_sampling_ratio_cap == 2.0
    on_policy, _ = parse_args(
        ["--model_name_or_path", "m", "--async_steps", "0", "--truncated_importance_sampling_ratio_cap", "0"]
    )
    assert on_policy.truncated_importance_sampling_ratio_cap == 0


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "open_instruct.grpo_fast", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model_name_or_path", "m", "--no_such_flag", "1"], "unknown flag(s): --no_such_flag"),
        (["--model_name_or_path", "m", "--deepspeed_stage", "1"], "--deepspeed_stage must be 2 or 3"),
        (["--model_name_or_path", "m", "--num_samples_per_prompt_rollout", "1"], "must be at least 2"),
        (["--model_name_or_path", "m", "--mask_truncated_completions", "maybe"], "expected true or false"),
        ([], "--model_name_or_path"),
        (
            ["--model_name_or_path", "m", "--eval_tasks", "ifeval,mmlu"],
            "--oe_eval_tasks: unknown task 'mmlu'; known: ifeval, bbh_cot",
        ),
        (
            ["--model_name_or_path", "m", "--oe_eval_tasks", "x", "--eval_include_path", "/no/such"],
            "--eval_include_path /no/such: no such folder",
        ),
        (
            ["--model_name_or_path", "m", "--chat_template_kwargs", "{enable_thinking: false}"],
            "--chat_template_kwargs is not JSON (Expecting property name enclosed in double quotes at character 2)",
        ),
        (
            ["--model_name_or_path", "m", "--truncated_importance_sampling_ratio_cap", "0"],
            "--async_steps 1 trains on samples from weights up to 1 update(s) old",
        ),
    ],
)
def test_flag_mistakes_are_usage_errors_without_traceback(args, message):
    """One line naming the flag; the usage is only on --help (failed before: 65 lines of it came first)."""
    proc = run(*args)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "usage:" not in proc.stderr, proc.stderr


def test_chat_template_kwargs_is_a_json_object():
    cfg, _ = parse_args(["--model_name_or_path", "m", "--chat_template_kwargs", '{"enable_thinking": false}'])
    assert cfg.template_kwargs == {"enable_thinking": False}
    assert parse_args(["--model_name_or_path", "m"])[0].template_kwargs == {}
    cfg.chat_template_kwargs = "[1]"
    assert template_kwargs_problems(cfg) == [
        "--chat_template_kwargs must be a JSON object like '{\"enable_thinking\": false}'"
    ]


def test_help_documents_every_flag():
    proc = run("--help")
    assert proc.returncode == 0
    for flag in (
        "--num_samples_per_prompt_rollout",
        "--truncated_importance_sampling_ratio_cap",
        "--async_steps",
        "--llm_judge_model",
        "--pack_length",
        "--kl_estimator",
    ):
        assert flag in proc.stdout


def test_bad_dataset_row_is_one_line_before_any_model_loads(tmp_path, tiny_judge_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}], "ground_truth": "hi", "dataset": "general-flip"}\n'
        '{"messages": [{"role": "assistant", "content": "x"}], "ground_truth": "x", "dataset": "general-flip"}\n'
    )
    proc = run(
        "--model_name_or_path",
        str(tiny_judge_dir),
        "--dataset_mixer_list",
        str(bad),
        "1.0",
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad.jsonl:2: " in proc.stderr and "user turn" in proc.stderr  # FILE:LINE, counted from 1
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("model", "api_base", "message"),
    [
        (
            "Qwen/Qwen3-4B",
            None,
            "--llm_judge_model Qwen/Qwen3-4B: not a litellm id (provider/model); for a judge served "
            "by vLLM write hosted_vllm/Qwen/Qwen3-4B",
        ),
        ("hosted_vllm/Qwen/Qwen3-4B", None, "no address for the judge: set --llm_judge_api_base"),
        ("hosted_vllm/Qwen/Qwen3-4B", "http://127.0.0.1:9/v1", None),
        ("openai/gpt-4o-mini", None, None),
    ],
)
def test_judge_settings_are_checked_before_any_call(model, api_base, message, monkeypatch):
    from open_instruct.judge_config import judge_problem

    monkeypatch.delenv("HOSTED_VLLM_API_BASE", raising=False)
    problem = judge_problem(model, api_base)
    assert problem is None if message is None else message in problem


def test_judge_verifier_without_judge_model(tmp_path, tiny_judge_dir):
    proc = run(
        "--model_name_or_path",
        str(tiny_judge_dir),
        "--dataset_mixer_list",
        str(REPO / "data/general_chat_flip_sample.jsonl"),
        "1.0",
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 2 and "set --llm_judge_model" in proc.stderr


# --------------------------------------------------------------------------------------------------
# Config files


PRESETS = REPO / "configs/train/grpo"


@pytest.mark.parametrize("preset", ["tiny", "single_gpu", "paper"])
def test_every_preset_is_a_valid_config(preset):
    cfg, ignored = parse_args(["--config", str(PRESETS / f"{preset}.yaml")])
    assert cfg.model_name_or_path and not ignored


def test_the_paper_preset_is_the_published_recipe():
    """configs/train/grpo/paper.yaml sets what the published command line sets (its AI2-only flags aside)."""
    published, _ = parse_args(shlex.split(PUBLISHED))
    preset, _ = parse_args(["--config", str(PRESETS / "paper.yaml")])
    differ = {
        k: (getattr(preset, k), getattr(published, k))
        for k in vars(published)
        if getattr(preset, k) != getattr(published, k)
    }
    # what the published script sets for AI2's cluster (paths, eval sets, names) or which a preset leaves to the
    # launch script (the data, the judge's address)
    assert set(differ) <= {
        "exp_name",
        "output_dir",
        "dataset_mixer_list",
        "dataset_mixer_eval_list",
        "dataset_mixer_list_splits",
        "dataset_mixer_eval_list_splits",
        "backend_timeout",
        "keep_last_n_checkpoints",
        "eval_on_step_0",
        "llm_judge_model",
        "config",
        # downstream evaluations need a GPU the preset's 24 actors leave free (README: Downstream evaluation)
        "oe_eval_tasks",
        "oe_eval_max_length",
    }, differ


def test_command_line_flags_override_the_config(tmp_path):
    cfg, _ = parse_args(["--config", str(PRESETS / "tiny.yaml"), "--learning_rate", "1e-4", "--seed", "7"])
    assert cfg.learning_rate == 1e-4 and cfg.seed == 7 and cfg.response_length == 64  # the rest from the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("learnig_rate: 1e-6\n", "unknown key 'learnig_rate'"),
        ("num_learners_per_node: 8\n", "num_learners_per_node: expected a list, got 8"),
        ("gradient_checkpointing: yes please\n", "gradient_checkpointing: expected true or false"),
        ("deepspeed_stage: 2.5\n", "deepspeed_stage: expected a whole number, got 2.5"),
        ("lr_scheduler_type: sometimes\n", "lr_scheduler_type: expected one of constant, linear, cosine"),
        ("- a list\n", "a config file is a mapping of flag: value"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file_and_key(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    proc = run("--config", str(bad), "--model_name_or_path", "m")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "bad.yaml" in proc.stderr and message in proc.stderr, proc.stderr


def test_eval_tasks_is_an_alias_in_flags_and_config_files(tmp_path):
    cfg, _ = parse_args(["--model_name_or_path", "m", "--eval_tasks", "ifeval", "math_500"])
    assert cfg.oe_eval_tasks == ["ifeval", "math_500"]
    config = tmp_path / "c.yaml"
    config.write_text("model_name_or_path: m\neval_tasks: [bbh_cot]\noe_eval_max_length: 4096\n")
    cfg, _ = parse_args(["--config", str(config)])
    assert cfg.oe_eval_tasks == ["bbh_cot"] and cfg.oe_eval_max_length == 4096
