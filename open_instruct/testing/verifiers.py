"""A cheap verifiable reward for smoke and learning tests, registered as `word-share` when this module is
imported: the trainer does so with `--verifier_modules open_instruct.testing.verifiers`, which is also how a
verifier of your own joins the registry (ground_truth_utils.register_verifier in a module you name)."""

import json
from pathlib import Path

from open_instruct.ground_truth_utils import Verifier, VerifierResult, register_verifier

# Prompts for word-share runs: the learning tests, the resilience tests and benchmarks/grpo_step.py take the
# first n.
WORD_PROMPTS = [
    "Say something.",
    "Tell me a story.",
    "Write a line.",
    "What do you like?",
    "Describe a city.",
    "Give me three words.",
    "Write about food.",
    "Explain the weather.",
]


class WordShareVerifier(Verifier):
    """The share of the response's words that equal the ground-truth word (case-insensitive)."""

    name = "word-share"

    async def async_call(self, messages, response, ground_truth):
        if not ground_truth or not str(ground_truth).strip():
            raise ValueError("word-share needs a ground-truth word")
        target = str(ground_truth).strip().lower()
        words = response.lower().split()
        return VerifierResult(sum(w == target for w in words) / len(words) if words else 0.0)


register_verifier("word-share", lambda client=None, on_unparsed="raw": WordShareVerifier())


def write_word_rows(path: str | Path, n: int, word: str = "dogs") -> Path:
    """The first n of WORD_PROMPTS as RLVR rows that the `word-share` verifier scores against `word`."""
    rows = [
        {"messages": [{"role": "user", "content": prompt}], "ground_truth": word, "dataset": "word-share"}
        for prompt in WORD_PROMPTS[:n]
    ]
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)
