"""A step's rollouts against stand-in engines: chunks across engines and the weight versions each sample
records (the real engine is in tests/e2e/test_vllm_engine.py, the trainer end to end in
tests/e2e/test_grpo_fast.py)."""

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from open_instruct.grpo_config import parse_args
from open_instruct.rewards import RewardConfig, RewardDispatcher
from open_instruct.rl_utils import group_advantages
from open_instruct.rollouts import Rollout, rollout_and_score
from open_instruct.testing import verifiers  # noqa: F401  (registers word-share)
from open_instruct.train_metrics import step_metrics


@dataclass
class Prompt:
    prompt_token_ids: list[int]
    dataset: str = "word-share"
    messages: list = field(default_factory=lambda: [{"role": "user", "content": "Say something."}])
    ground_truth: str = "dogs"
    index: int = 0


class VersionedEngine:
    """Stands in for an LLMRayActor whose weights are updated between two rollout calls of one step (a sync
    that lands while the step's second chunk waits): each call's samples carry the version it ran on."""

    def __init__(self, version: int):
        self.version = version
        self.generate = SimpleNamespace(remote=self._generate)

    def _generate(self, prompt_ids, n, temperature, max_tokens, stop, seed):
        version = self.version
        self.version += 1  # the next call runs on newer weights

        async def result():
            return [
                [
                    {
                        "token_ids": [5],
                        "logprobs": [-1.0],
                        "finish_reason": "stop",
                        "text": "dogs dogs",
                        "weight_versions": (version, version),
                    }
                    for _ in range(n)
                ]
                for _ in prompt_ids
            ]

        return result()


def test_a_step_that_mixes_weight_versions_records_them_per_sample():
    """Failed before: a step recorded one weights version (the trainer's when the rollout started), so a step
    whose second rollout call ran on newer weights looked on-policy by one update less than it was."""

    cfg = parse_args(
        [
            *(
                "--model_name_or_path m --rollout_chunks_per_engine 2 --num_unique_prompts_rollout 4 "
                "--num_samples_per_prompt_rollout 2"
            ).split()
        ]
    )[0]
    prompts = [Prompt([1, 2, 3], index=i) for i in range(4)]
    comps, results, _, _ = asyncio.run(
        rollout_and_score(
            [VersionedEngine(3)], prompts, RewardDispatcher(RewardConfig(), None), cfg, 2, "1/train/5"
        )
    )
    versions = [c[0]["weight_versions"] for c in comps]  # two calls of 2 prompts each, in either order
    assert (
        versions[0] == versions[1]
        and versions[2] == versions[3]
        and {versions[0], versions[2]} == {(3, 3), (4, 4)}
    )
    ro = Rollout(5, prompts, comps, results, 0.1, 0.0, {"epoch": 1})
    adv = group_advantages([r.score for g in results for r in g], 2, keep_zero_std=True)
    m = step_metrics(ro, adv, [], 0.0, 0.0, 1.0)
    # step 5 trains the weights of step 4: samples from version 3 are one update behind, from 4 none
    assert (m["weights_staleness"], m["weights_staleness_min"]) == (1, 0)
    assert np.allclose([r.score for g in results for r in g], 1.0)
