"""FLIP as a TRL reward function:

    from trl import GRPOTrainer
    from open_instruct.integrations.trl import flip_reward

    trainer = GRPOTrainer(model=..., reward_funcs=[flip_reward(judge_model="hosted_vllm/Qwen/Qwen3-4B",
                          api_base="http://127.0.0.1:8000/v1")], train_dataset=...)

The function is async (TRL gathers async reward functions concurrently) and named `flip`, so TRL logs it as
`rewards/flip`. It takes TRL's arguments: `prompts` and `completions` in either of TRL's formats, plain text
(the prompt string is the instruction) or conversational (the last user turn is the instruction, earlier turns
are shown to the judge as context, as the trainer's verifier does; the completion is the assistant message).
A failed judge call is `None`: TRL leaves that sample out of its group's mean and std instead of training on
a made-up 0. Judge settings are FlipReward's (`timeout`, `max_concurrency`, ...).
"""

from open_instruct.flip_reward import FlipReward
from open_instruct.ground_truth_utils import split_conversation


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(
            str(m.get("content") or "") for m in completion if m.get("role", "assistant") == "assistant"
        )
    return str(completion)


def flip_reward(judge_model: str, api_base: str | None = None, **judge_settings):
    """A TRL reward function scoring completions with FLIP (module docstring)."""
    scorer = FlipReward(judge_model, api_base, **judge_settings)

    async def flip(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        instructions, contexts = [], []
        for prompt in prompts:
            if isinstance(prompt, list):
                context, instruction = split_conversation(prompt)
            else:
                context, instruction = [], str(prompt)
            instructions.append(instruction)
            contexts.append(context)
        results = await scorer.ascore(instructions, [_text(c) for c in completions], contexts)
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):  # TRL passes it: the share of failed and unparsed judge calls, per batch
            log_metric("flip/judge_failures", sum(not r.judge_ok for r in results) / max(len(results), 1))
            log_metric(
                "flip/unparsed", sum(r.judge_ok and not r.parsed for r in results) / max(len(results), 1)
            )
        return [r.reward for r in results]

    flip.scorer = scorer
    return flip
