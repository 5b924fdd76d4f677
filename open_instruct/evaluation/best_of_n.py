"""Best-of-N selection: score every candidate response to one prompt with a judge-based verifier and keep
the best. It is FLIP used for test-time scaling, with the pointwise LLM judge beside it for comparison.

    flip       reward = token F1 between the instruction the judge infers from a candidate and the real one
    pointwise  reward = the judge's 1-10 rating of the candidate, divided by 10

Tie rule: the highest reward wins, and among equal highest rewards the earliest candidate (lowest index),
so the choice depends on nothing but the rewards and the candidates' order (shuffle the candidates first if
their order carries meaning). A candidate whose judge call failed has no reward and is passed over; when
every call failed there is no best.
"""

import asyncio
from dataclasses import dataclass

from open_instruct.ground_truth_utils import Verifier, VerifierResult

VERIFIER_NAMES = {"flip": "general-flip", "pointwise": "general-quality"}


async def score_candidates(
    verifier: Verifier, messages: list[dict], responses: list[str]
) -> list[VerifierResult]:
    """The verifier's result for each response to the prompt `messages`, in order."""
    return list(await asyncio.gather(*(verifier.async_call(messages, r, None) for r in responses)))


def best_index(scores: list[float | None]) -> int | None:
    """The index of the highest score, the earliest among equals; None when no score is given."""
    best = None
    for i, score in enumerate(scores):
        if score is not None and (best is None or score > scores[best]):
            best = i
    return best


@dataclass
class Selection:
    responses: list[str]
    results: list[VerifierResult]

    @property
    def scores(self) -> list[float | None]:
        return [r.score for r in self.results]

    @property
    def best_index(self) -> int | None:
        return best_index(self.scores)

    def to_json(self) -> dict:
        best = self.best_index
        return {
            "best_index": best,
            "best_response": None if best is None else self.responses[best],
            "scores": self.scores,
            "extracted": [r.extracted for r in self.results],  # inferred instruction, or 1-10 rating
            "judge_outputs": [r.judge_output for r in self.results],
            "errors": [r.error for r in self.results],
        }


async def select(verifier: Verifier, messages: list[dict], responses: list[str]) -> Selection:
    return Selection(responses, await score_candidates(verifier, messages, responses))
