"""The published recipe's model families through the rollout and learner roles, with tiny random models built
from transformers' own config classes (open_instruct/testing/tiny_models.py: qwen3-tied, qwen3-untied, olmo3).

For each: vLLM loads it with the class it should (Olmo3 through vLLM's Transformers backend), its greedy
decoding matches transformers' token for token, and the logprobs it samples with at temperature 1.0 and 0.7
match the learner's log-probs of the same tokens (packing.token_logprobs on micro-batches laid out as training
lays them out: one packed row, and padded rows), sequences longer than Olmo3's sliding window included. Then
a 2-step on-policy GRPO run with 2 ZeRO-3 learners on the simulated cluster (the tied Qwen3's run is in
test_grpo_fast.py): the engine's logprobs equal the learners' before each update (logprob_diff_max), so after
the first weight sync every parameter reached vLLM under the right name (q/k norms, tied or untied lm_head),
and the saved model reloads as its class.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from open_instruct import vllm_utils  # noqa: E402
from open_instruct.packing import Sample, collate, token_logprobs  # noqa: E402
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of  # noqa: E402
from open_instruct.testing.tiny_models import ARCHS  # noqa: E402
from open_instruct.testing.verifiers import WORD_PROMPTS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VLLM_CLASS = {
    "qwen3-tied": "Qwen3ForCausalLM",
    "qwen3-untied": "Qwen3ForCausalLM",
    "olmo3": "TransformersForCausalLM",  # vLLM 0.32 has no Olmo3 class of its own
}
# The trainer runs here, a minute each on 2 cores, use ZeRO-3 as the published recipe does. The tied Qwen3
# trains on-policy with one ZeRO-2 learner in tests/e2e/test_grpo_fast.py (the run with the real judge server),
# with the same check on logprob_diff_max.
TRAINED = ["qwen3-untied", "olmo3"]
PROMPTS = ["write a poem about cats", "explain python code in three steps", "give me five reasons why"]
TOLERANCE = 1e-3  # float32 on both sides


def spread(src: Path, out: Path) -> Path:
    """The model with its matrices drawn wider than the default init, so greedy decoding depends on the whole
    network rather than echoing the last token (what a freshly initialised tiny model does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.15)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_vllm_runs_each_family_as_transformers_does(arch, driver, tiny_arch_dirs, tmp_path):
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = spread(tiny_arch_dirs[arch], tmp_path / arch)
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False
        )
        for t in PROMPTS
    ]
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    (engine,) = vllm_utils.create_vllm_engines(1, 1, str(path), seed=0, max_model_len=256)
    try:
        assert ray.get(engine.model_class.remote()) == VLLM_CLASS[arch]
        greedy = ray.get(engine.generate.remote(prompts, 1, 0.0, 16, None, None))
        for prompt, (sample,) in zip(prompts, greedy, strict=True):
            ids = torch.tensor([prompt])
            with torch.no_grad():
                expected = hf.generate(
                    ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16
                )
            assert sample["token_ids"] == expected[0, len(prompt) :].tolist()
            assert len(set(sample["token_ids"])) > 2, "greedy decoding should not just repeat a token"
        for temperature in (1.0, 0.7):
            out = ray.get(engine.generate.remote(prompts, 2, temperature, 24, None, 7))
            samples = [
                Sample(prompt, s["token_ids"], s["logprobs"], 0.0)
                for prompt, group in zip(prompts, out, strict=True)
                for s in group
            ]
            assert max(s.length for s in samples) > 2 * 16  # past Olmo3's window of 16
            for packed in (True, False):
                batch = collate(samples, tokenizer.pad_token_id, "cpu", packed_rows=packed)
                with torch.no_grad():
                    learner = token_logprobs(hf, batch, temperature)
                gap = ((learner - batch["vllm_logprobs"]).abs() * batch["mask"]).max().item()
                assert gap < TOLERANCE, (temperature, packed, gap)
                assert batch["mask"].sum() == sum(len(s.response_ids) for s in samples)
    finally:
        ray.kill(engine)


def parity_judge(messages, n):
    """A FLIP judge whose reward depends on the response: it names every training prompt for a response of
    even length (F1 about 0.4) and nothing for an odd one (0), so each group has signal and the weights move."""
    inferred = " ".join(WORD_PROMPTS[:4]) if len(response_of(messages)) % 2 == 0 else "nothing"
    return Reply(json.dumps({"INFERRED INSTRUCTION": inferred}))


@pytest.mark.parametrize("arch", TRAINED)
def test_two_on_policy_steps_with_two_learners_keep_the_engine_in_sync(
    arch, gpu_cluster, tiny_arch_dirs, tmp_path
):
    out = tmp_path / "run"
    rows = tmp_path / "flip.jsonl"
    rows.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": p}], "ground_truth": p, "dataset": "general-flip"}
            )
            + "\n"
            for p in WORD_PROMPTS[:4]
        )
    )
    with ScriptedJudge(parity_judge) as judge:
        cmd = [
            *(
                f"{sys.executable} -m open_instruct.grpo_fast --model_name_or_path {tiny_arch_dirs[arch]} "
                f"--output_dir {out} --ray_address {gpu_cluster.address} --num_learners_per_node 2 "
                "--deepspeed_stage 3 --async_steps 0 --num_unique_prompts_rollout 2 "
                "--num_samples_per_prompt_rollout 4 --total_episodes 16 --response_length 24 --pack_length 512 "
                "--max_prompt_token_length 256 --learning_rate 1e-2 --backend_timeout 4 "
                f"--llm_judge_model hosted_vllm/scripted --llm_judge_api_base {judge.api_base} "
                f"--dataset_mixer_list {rows} 1.0"
            ).split()
        ]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"vLLM engine(s) running {VLLM_CLASS[arch]}" in proc.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["samples_trained"] > 0
    # step 1: the initial weights on both sides; step 2: the learners' updated weights against the engine's,
    # synced from them
    for m in metrics:
        assert m["logprob_diff_max"] < TOLERANCE, m
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out)
    initial = AutoModelForCausalLM.from_pretrained(tiny_arch_dirs[arch])
    assert (
        type(saved) is type(initial)
        and saved.config.tie_word_embeddings == initial.config.tie_word_embeddings
    )
    before = initial.state_dict()
    moved = max((w - before[name]).abs().max().item() for name, w in saved.state_dict().items())
    assert moved > 1e-3  # the updates reached the saved model
