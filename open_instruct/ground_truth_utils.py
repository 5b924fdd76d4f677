"""Verifiers: turn (conversation, response, ground truth) into a reward.

A dataset row's `dataset` column names its verifier, e.g. `general-flip` or `general-quality`; the
registry below maps that name to a verifier. Judge-based verifiers are `LMJudgeVerifier`s, one per judge
type in judge_utils.JUDGE_TYPES, registered as `general-<judge type>`.

FLIP's ground truth is the full text of the last user message in the row's `messages` (earlier turns are
passed to the judge as context); rows without messages fall back to their `ground_truth` string.

Two guards against reward hacks (numbers in benchmarks/reward_hacking.py and the README):
- a response that restates the instruction (a share of at least `echo_overlap_max` of the instruction's
  word pairs appear in it, after F1's normalisation) gets reward 0 without a judge call, flagged in `error`
  and `details["echo_overlap"]`: a judge reading a restated request infers the request;
- under `raw`, an unparsed answer that contains the whole instruction gets 0, not F1 1.0 against itself;
- an empty response gets 0 without a judge call (a judge asked about nothing still invents an instruction).
The judge prompt also fences the response (judge_utils.fence), so text in it cannot close the frame.

Every result says whether the judge answered (`judge_ok`) and whether its answer parsed (`parsed`).
A judge that could not be reached gives `score=None`: such a sample has no reward and must not be
trained on. When the judge answered but no instruction parses, the `raw` policy (the published
recipe's behaviour) scores F1 against the judge's raw text and flags `parsed=False`; `fail` gives None.
An answer cut off inside the judge's reasoning (an unclosed <think>) is unparsed and gives None under either
policy: its raw text is unfinished thinking, not an answer.
"""

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from open_instruct import judge_utils
from open_instruct.f1 import f1_score, normalize_answer
from open_instruct.judge_client import JudgeClient

Message = dict[str, str]
OnUnparsed = Literal["raw", "fail"]
ECHO_OVERLAP_MAX = 0.6
"""On-task responses in the small world reach at most 0.44 (1,000 of them), the hand-written ones in
data/flip_demo.jsonl 0.14; a verbatim echo is 1.0."""


def echo_overlap(response: str, instruction: str) -> float:
    """Share of the instruction's word pairs (word for a one-word instruction) that also appear in the response,
    both normalised as F1 normalises them."""
    ins, res = normalize_answer(instruction).split(), normalize_answer(response).split()
    if len(ins) < 2:
        return float(bool(ins) and ins[0] in res)
    pairs = set(zip(res, res[1:], strict=False))
    wanted = list(zip(ins, ins[1:], strict=False))
    return sum(p in pairs for p in wanted) / len(wanted)


@dataclass
class VerifierResult:
    score: float | None
    """The reward, or None when there is none to give (judge failure, or unparsed under `fail`)."""
    judge_ok: bool = True
    parsed: bool = True
    error: str | None = None
    cost: float = 0.0
    extracted: object = None
    """What was parsed from the judge: the inferred instruction, the 1-10 score, ..."""
    judge_output: str | None = None
    details: dict[str, float] = field(default_factory=dict)


def split_conversation(messages: list[Message]) -> tuple[list[Message], str]:
    """(turns before the last user message, that message's full text). Raises ValueError with no user turn."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return messages[:i], str(messages[i].get("content") or "")
    raise ValueError("messages contain no user turn")


class Verifier(ABC):
    name: str

    @abstractmethod
    async def async_call(
        self, messages: list[Message] | None, response: str, ground_truth: str | None
    ) -> VerifierResult:
        """Score `response`, written in reply to `messages` (the prompt turns), against `ground_truth`."""


class LMJudgeVerifier(Verifier):
    """A reward from a judge model, for any judge type in judge_utils.JUDGE_TYPES."""

    def __init__(
        self,
        judge_type: str,
        client: JudgeClient,
        on_unparsed: OnUnparsed = "raw",
        echo_overlap_max: float = ECHO_OVERLAP_MAX,
    ):
        if judge_type not in judge_utils.JUDGE_TYPES or judge_type == "pairwise" or judge_type == "listwise":
            raise ValueError(f"judge type {judge_type!r} does not score a single response")
        if on_unparsed not in ("raw", "fail"):
            raise ValueError(f"on_unparsed must be 'raw' or 'fail', not {on_unparsed!r}")
        self.judge_type = judge_type
        self.name = f"general-{judge_type}"
        self.client = client
        self.on_unparsed = on_unparsed
        self.echo_overlap_max = echo_overlap_max

    async def async_call(self, messages, response, ground_truth):
        if self.judge_type == "flip":
            return await self._flip(messages, response, ground_truth)
        return await self._quality(messages, response, ground_truth)

    async def _flip(self, messages, response, ground_truth) -> VerifierResult:
        if messages:
            context, instruction = split_conversation(messages)
        elif ground_truth is not None:
            context, instruction = [], ground_truth
        else:
            raise ValueError("FLIP needs the prompt messages or a ground-truth instruction")
        if not response.strip():  # nothing to infer from; the world's judge makes up an instruction worth 0.2
            return VerifierResult(0.0, error="empty response")
        echo = echo_overlap(response, instruction)
        if echo >= self.echo_overlap_max:
            return VerifierResult(
                0.0,
                error=f"response restates the instruction (word-pair overlap {echo:.2f} >= {self.echo_overlap_max:g})",
                details={"echo_overlap": echo},
            )
        result = await self.client.judge(
            lambda r: judge_utils.flip_messages(r, context), response, judge_type="flip"
        )
        if not result.ok:
            return VerifierResult(None, judge_ok=False, error=result.error, cost=result.cost)
        if judge_utils.cut_in_reasoning(result.text):
            return cut_off(result)
        inferred = judge_utils.extract_inferred_instruction(result.text)
        parsed = inferred is not None
        if not parsed and self.on_unparsed == "fail":
            return VerifierResult(
                None,
                parsed=False,
                error="judge answer has no inferred instruction",
                cost=result.cost,
                judge_output=result.text,
            )
        scored = inferred if parsed else result.text or ""
        f1 = f1_score(scored, instruction)
        if not parsed and normalize_answer(instruction) in normalize_answer(scored):
            return VerifierResult(
                0.0,
                parsed=False,
                cost=result.cost,
                judge_output=result.text,
                error="judge answer has no inferred instruction and repeats the instruction: not rewarded",
            )
        return VerifierResult(
            f1["f1"],
            parsed=parsed,
            cost=result.cost,
            extracted=inferred,
            judge_output=result.text,
            details={"precision": f1["precision"], "recall": f1["recall"]},
            error=None if parsed else "judge answer has no inferred instruction; scored its raw text",
        )

    async def _quality(self, messages, response, ground_truth) -> VerifierResult:
        if not messages:
            raise ValueError(f"{self.name} needs the prompt messages")
        context, last = split_conversation(messages)
        # A single-turn prompt is shown as is; a multi-turn one as the whole conversation.
        prompt = (
            judge_utils.format_context([*context, {"role": "user", "content": last}]) if context else last
        )
        reference = ground_truth if self.judge_type == "quality_ref" else None
        if reference is None:
            result = await self.client.judge(
                lambda p, r: judge_utils.pointwise_messages(p, r), prompt, response, judge_type="quality"
            )
        else:
            result = await self.client.judge(
                lambda p, r, ref: judge_utils.pointwise_messages(p, r, ref),
                prompt,
                response,
                reference,
                judge_type="quality_ref",
            )
        if not result.ok:
            return VerifierResult(None, judge_ok=False, error=result.error, cost=result.cost)
        if judge_utils.cut_in_reasoning(result.text):
            return cut_off(result)
        score = judge_utils.extract_score(result.text)
        if score is None or not 0 <= score <= 10:
            error = "judge answer has no score" if score is None else f"judge score {score:g} is outside 0-10"
            # No raw-text fallback exists for a rating; `raw` gives the lowest reward, `fail` none.
            fallback = 0.0 if self.on_unparsed == "raw" else None
            return VerifierResult(
                fallback, parsed=False, error=error, cost=result.cost, judge_output=result.text
            )
        return VerifierResult(score / 10.0, cost=result.cost, extracted=score, judge_output=result.text)


def cut_off(result) -> VerifierResult:
    """A judge answer cut off inside its reasoning: unparsed and no reward, whatever --llm_judge_on_unparsed
    says (there is no answer to score; its raw text is the judge's unfinished thinking)."""
    return VerifierResult(
        None,
        parsed=False,
        cost=result.cost,
        judge_output=result.text,
        error="judge answer cut off inside its reasoning (no </think>): raise --llm_judge_max_tokens or pass "
        "--llm_judge_enable_thinking false",
    )


# --------------------------------------------------------------------------------------------------
# Registry: verifier name (a dataset row's `dataset` column) -> factory

VerifierFactory = Callable[..., Verifier]
VERIFIER_REGISTRY: dict[str, VerifierFactory] = {}


def register_verifier(name: str, factory: VerifierFactory) -> None:
    if name in VERIFIER_REGISTRY:
        raise ValueError(f"verifier {name!r} is already registered")
    VERIFIER_REGISTRY[name] = factory


for _judge_type in ("flip", "quality", "quality_ref"):
    register_verifier(
        f"general-{_judge_type}",
        lambda client, _t=_judge_type, **options: LMJudgeVerifier(_t, client, **options),
    )


def build_verifier(
    name: str,
    client: JudgeClient | None = None,
    on_unparsed: OnUnparsed = "raw",
    echo_overlap_max: float = ECHO_OVERLAP_MAX,
) -> Verifier:
    """The verifier registered under `name`; a clear error naming the known ones otherwise."""
    key = name.strip().lower()
    if key not in VERIFIER_REGISTRY:
        raise KeyError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIER_REGISTRY))}")
    if key.startswith("general-") and client is None:
        raise ValueError(f"verifier {name!r} needs a judge model (--llm_judge_model)")
    if key.startswith("general-"):
        return VERIFIER_REGISTRY[key](client, on_unparsed=on_unparsed, echo_overlap_max=echo_overlap_max)
    return VERIFIER_REGISTRY[key](client, on_unparsed=on_unparsed)
