"""A cheap verifiable reward for smoke and learning tests, registered as `word-share` when this module is
imported: the trainer does so with `--verifier_modules open_instruct.testing.verifiers`, which is also how a
verifier of your own joins the registry (ground_truth_utils.register_verifier in a module you name)."""

from open_instruct.ground_truth_utils import Verifier, VerifierResult, register_verifier


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
