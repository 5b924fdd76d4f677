"""The tiny models of the real families (open_instruct/testing/tiny_models.py): each has its family's
architecture features, reloads as the same class with the same outputs, and its tokenizer carries the
family's template and think tokens."""

import copy
import json

import pytest
import torch

from open_instruct.dataset_utils import CHAT_TEMPLATES
from open_instruct.testing import tiny_models
from open_instruct.testing.tiny_models import ARCHS

EXPECTED = {  # class, tied lm_head, KV heads < query heads
    "qwen3-tied": ("Qwen3ForCausalLM", True, True),
    "qwen3-untied": ("Qwen3ForCausalLM", False, True),
    "olmo3": ("Olmo3ForCausalLM", False, False),
}


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_each_family_is_built_with_its_features(tiny_arch_dirs, arch):
    model, tok = load(tiny_arch_dirs[arch])
    cls, tied, gqa = EXPECTED[arch]
    config = model.config
    assert type(model).__name__ == cls and config.torch_dtype == torch.float32
    assert (config.num_key_value_heads < config.num_attention_heads) == gqa
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    assert head_dim == 64  # the smallest the CPU attention kernel takes
    names = dict(model.named_parameters())
    assert (
        "model.layers.0.self_attn.q_norm.weight" in names
        and "model.layers.0.self_attn.k_norm.weight" in names
    )
    same = model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert same == tied == config.tie_word_embeddings
    if arch == "olmo3":
        assert (
            set(config.layer_types) == {"sliding_attention", "full_attention"} and config.sliding_window == 16
        )
    assert tok.chat_template == CHAT_TEMPLATES[ARCHS[arch]["template"]]
    assert len(tok("<think>x</think>", add_special_tokens=False)["input_ids"]) == 3


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_saved_model_reloads_as_the_same_class_with_the_same_logits(tiny_arch_dirs, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    model, _ = load(tiny_arch_dirs[arch])
    ids = torch.arange(3, 40).unsqueeze(0)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(model)
    torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_olmo3_sliding_window_shapes_the_later_positions(tiny_arch_dirs):
    """The window (16) is shorter than the sequence (40): the first 16 positions see the same context with or
    without it, later ones do not."""
    model, _ = load(tiny_arch_dirs["olmo3"])
    ids = torch.arange(3, 43).unsqueeze(0)
    windowed = model(ids).logits
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    config.layer_types = ["full_attention"] * config.num_hidden_layers
    full = AutoModelForCausalLM.from_config(config).eval()
    full.load_state_dict(model.state_dict())
    unwindowed = full(ids).logits
    torch.testing.assert_close(windowed[:, :16], unwindowed[:, :16], rtol=0, atol=1e-5)
    assert (windowed[:, 20:] - unwindowed[:, 20:]).abs().max() > 1e-3


def test_the_builder_skips_a_build_with_the_same_settings(tmp_path, monkeypatch):
    out = tiny_models.build_tiny_model(tmp_path, arch="qwen3-tied")
    spec = json.loads((out / "tiny_model_spec.json").read_text())
    assert spec["arch"] == "qwen3-tied" and spec["num_key_value_heads"] == 2
    monkeypatch.setattr(tiny_models, "build_arch_model", lambda *a, **k: pytest.fail("rebuilt"))
    assert tiny_models.build_tiny_model(tmp_path, arch="qwen3-tied") == out
