"""What a training run reads before any model or actor starts, each part checked: the verifier modules, the
policy's tokenizer and chat template, both dataset mixtures (every row), the prompts' lengths, and the judge
settings. The trainer stops at the first mistake (a UserError, one line); the dry run collects them all, one
line each, and every check that does not depend on a failed one still runs.
"""

from dataclasses import dataclass, field
from typing import Any

from open_instruct.cli_utils import UserError, first_line
from open_instruct.grpo_config import GRPOConfig


@dataclass
class Inputs:
    tokenizer: Any = None  # None when it could not be read (a dry run goes on)
    chat_template: str | None = None
    prompts: list = field(default_factory=list)  # dataset_utils.PromptRow, training mixture
    eval_prompts: list = field(default_factory=list)
    judge: Any = None  # judge_client.JudgeClient when a verifier calls a judge
    rewards: Any = None  # rewards.RewardDispatcher


def read_inputs(cfg: GRPOConfig, problems: list[str] | None = None) -> Inputs:
    """Read and check everything (see the module docstring). Sets cfg.rollout_chunks_per_engine when it is 0
    (auto): 2 when a verifier calls the judge, else 1."""
    from open_instruct import dataset_utils
    from open_instruct.judge_client import JudgeClient
    from open_instruct.judge_config import judge_config, judge_problem
    from open_instruct.rewards import RewardConfig, RewardDispatcher

    def attempt(step, *args):
        try:
            return step(*args)
        except UserError as e:
            if problems is None:
                raise
            problems.append(str(e))
            return None

    out = Inputs()
    for module in cfg.verifier_modules:
        attempt(import_verifiers, module)
    read = attempt(read_tokenizer, cfg)
    if read is not None:
        out.tokenizer, out.chat_template = read
    train = attempt(
        load_rows, cfg, cfg.dataset_mixer_list, cfg.dataset_mixer_list_splits, "--dataset_mixer_list"
    )
    evals = []
    if cfg.dataset_mixer_eval_list:
        flag = "--dataset_mixer_eval_list"
        evals = attempt(load_rows, cfg, cfg.dataset_mixer_eval_list, cfg.dataset_mixer_eval_list_splits, flag)
    dropped = 0
    if out.tokenizer is not None and train is not None:
        longest = cfg.max_prompt_token_length
        out.prompts, dropped = dataset_utils.tokenize_prompts(
            train, out.tokenizer, out.chat_template, longest, cfg.template_kwargs
        )
        if not out.prompts:
            attempt(
                fail,
                f"no training prompts left after dropping {dropped} longer than --max_prompt_token_length {longest}",
            )
        if evals:
            out.eval_prompts, _ = dataset_utils.tokenize_prompts(
                evals, out.tokenizer, out.chat_template, longest, cfg.template_kwargs
            )
    names = {row["dataset"] for row in (train or []) + (evals or [])}
    needs_judge = any(n.lower().startswith("general-") for n in names)
    if cfg.rollout_chunks_per_engine == 0:  # overlap only pays when rewards wait on a judge
        cfg.rollout_chunks_per_engine = 2 if needs_judge else 1
    # When the data could not be read (a dry run goes on), a judge that is named is taken as needed, so its
    # settings are checked too.
    needs_judge = needs_judge or (train is None and bool(cfg.llm_judge_model))
    if needs_judge:
        if not cfg.llm_judge_model:
            problem = f"verifier(s) {sorted(names)} need a judge: set --llm_judge_model"
        else:
            problem = judge_problem(cfg.llm_judge_model, cfg.llm_judge_api_base)
        if problem:
            attempt(fail, problem)
        else:
            out.judge = JudgeClient(judge_config(cfg))
    unparsed = cfg.llm_judge_on_unparsed
    out.rewards = RewardDispatcher(
        RewardConfig(cfg.non_stop_penalty, cfg.non_stop_penalty_value, unparsed, cfg.flip_echo_overlap_max),
        out.judge,
    )
    if out.prompts:
        print(
            f"data: {len(out.prompts)} training prompts ({dropped} dropped as too long), "
            f"{len(out.eval_prompts)} eval prompts; verifiers: {', '.join(sorted(names))}"
        )
    return out


def fail(message: str):
    raise UserError(message)


def import_verifiers(module: str) -> None:
    """Import a --verifier_modules entry (it registers its verifiers as it is imported)."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"--verifier_modules {module}: cannot import it ({first_line(e)})") from None


def read_tokenizer(cfg: GRPOConfig) -> tuple[Any, str]:
    """(the policy's tokenizer, the chat template the prompts are rendered with)."""
    from transformers import AutoTokenizer

    from open_instruct import dataset_utils

    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name_or_path)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"--model_name_or_path {cfg.model_name_or_path}: cannot read its tokenizer ({first_line(e)})"
        ) from None
    try:
        return tokenizer, dataset_utils.get_chat_template(tokenizer, cfg.chat_template_name)
    except dataset_utils.DatasetError as e:
        raise UserError(f"--chat_template_name: {e}") from None


def load_rows(cfg: GRPOConfig, mixer: list[str], splits: list[str], flag: str) -> list[dict]:
    """The validated rows of one mixture; a bad source or row is a UserError naming it."""
    from open_instruct import dataset_utils
    from open_instruct.ground_truth_utils import VERIFIER_REGISTRY

    try:
        return dataset_utils.load_mixture(mixer, splits, cfg.seed, known_verifiers=set(VERIFIER_REGISTRY))
    except (dataset_utils.DatasetError, ValueError, FileNotFoundError) as e:
        raise UserError(f"{flag}: {first_line(e)}") from None
