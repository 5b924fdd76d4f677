"""FLIP as a verl reward function (`custom_reward_function.path` = this file):

    custom_reward_function:
      path: open_instruct/integrations/verl.py
      name: compute_score              # or compute_score_batch with verl's batch reward manager
    reward_model:
      reward_kwargs: {judge_model: hosted_vllm/Qwen/Qwen3-4B, api_base: http://127.0.0.1:8000/v1}

verl does not pass the prompt, so the instruction comes from `ground_truth` (a string) or from
`extra_info["instruction"]` (and earlier chat turns, if any, from `extra_info["context"]`). Judge settings
come from the reward kwargs, under FlipReward's names (`judge_model`, `api_base`, `timeout`, ...).

verl needs a number for every sample, so a failed judge call cannot be None here: it scores
`score_on_failure` (default 0.0, set it in the reward kwargs) and the returned dict says `judge_ok: False`
(verl logs the dict's other keys as extra info), so such samples can be found and masked. Everything else
matches the trainer's FLIP verifier: same F1, parser and guards.
"""

import threading

from open_instruct.flip_reward import FlipReward

_SCORERS: dict[tuple, FlipReward] = {}
_LOCK = threading.Lock()


def _scorer(kwargs: dict) -> tuple[FlipReward, float]:
    settings = dict(kwargs)
    on_failure = float(settings.pop("score_on_failure", 0.0))
    if "judge_model" not in settings:
        raise ValueError("set judge_model (and api_base) in the reward kwargs")
    key = tuple(sorted((k, repr(v)) for k, v in settings.items()))
    with _LOCK:
        if key not in _SCORERS:
            _SCORERS[key] = FlipReward(**settings)
    return _SCORERS[key], on_failure


def _instruction(ground_truth, extra_info) -> tuple[str, list]:
    extra_info = extra_info or {}
    instruction = extra_info.get("instruction") or ground_truth
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError("FLIP needs the instruction: a string ground_truth or extra_info['instruction']")
    return instruction, list(extra_info.get("context") or [])


def _row(result, on_failure: float) -> dict:
    return {
        "score": result.reward if result.reward is not None else on_failure,
        "judge_ok": result.judge_ok,
        "parsed": result.parsed,
        "precision": result.precision if result.precision is not None else 0.0,
        "recall": result.recall if result.recall is not None else 0.0,
    }


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos=None, **kwargs) -> list[dict]:
    """One dict per sample (see the module docstring); the judge calls run concurrently."""
    scorer, on_failure = _scorer(kwargs)
    extra_infos = extra_infos if extra_infos is not None else [None] * len(solution_strs)
    pairs = [_instruction(g, e) for g, e in zip(ground_truths, extra_infos, strict=True)]
    results = scorer.score([p[0] for p in pairs], list(solution_strs), [p[1] for p in pairs])
    return [_row(r, on_failure) for r in results]


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """verl's per-sample reward function: {"score", "judge_ok", "parsed", "precision", "recall"}."""
    return compute_score_batch([data_source], [solution_str], [ground_truth], [extra_info], **kwargs)[0]


__all__ = ["compute_score", "compute_score_batch"]
