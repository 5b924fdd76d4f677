"""The reward role: turn a rollout into a reward with the verifier its dataset row names.

The verifier sees the policy's final answer only: reasoning inside <think>...</think> is cut, and when the
answer is wrapped in <answer>...</answer> only that part is kept. For FLIP this matters beyond tidiness:
a policy that restates the prompt in its reasoning would hand the judge the instruction.
"""

import re
from dataclasses import dataclass

from open_instruct.ground_truth_utils import ECHO_OVERLAP_MAX, Verifier, VerifierResult, build_verifier
from open_instruct.judge_client import JudgeClient
from open_instruct.judge_utils import answer_blocks, strip_reasoning


def final_answer(text: str) -> str:
    """What the verifier reads: the text without <think> blocks, and of that the last <answer> block when
    there is one (even an empty one: an empty answer is what the policy gave)."""
    visible = strip_reasoning(text) if re.search(r"</?think>", text, flags=re.I) else text
    answers = answer_blocks(visible)
    return (answers[-1] if answers else visible).strip()


@dataclass
class RewardConfig:
    non_stop_penalty: bool = False
    non_stop_penalty_value: float = 0.0
    on_unparsed: str = "raw"
    echo_overlap_max: float = ECHO_OVERLAP_MAX


class RewardDispatcher:
    """Scores a rollout with the verifier its row names (the `dataset` column), applying the non-stop penalty
    first; each verifier is built once, on first use, and shares the run's judge client."""

    def __init__(self, cfg: RewardConfig, judge: JudgeClient | None):
        self.cfg, self.judge = cfg, judge
        self._verifiers: dict[str, Verifier] = {}

    def verifier(self, name: str) -> Verifier:
        if name not in self._verifiers:
            self._verifiers[name] = build_verifier(
                name, self.judge, on_unparsed=self.cfg.on_unparsed, echo_overlap_max=self.cfg.echo_overlap_max
            )
        return self._verifiers[name]

    async def score(
        self, name: str, messages: list[dict], ground_truth, text: str, finish_reason: str
    ) -> VerifierResult:
        if self.cfg.non_stop_penalty and finish_reason != "stop":
            return VerifierResult(self.cfg.non_stop_penalty_value, error="did not stop: non-stop penalty")
        gt = ground_truth[0] if isinstance(ground_truth, list) and ground_truth else ground_truth
        return await self.verifier(name).async_call(messages, final_answer(text), gt)
