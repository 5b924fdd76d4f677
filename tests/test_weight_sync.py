"""The weight sender's chunking and wire metadata (the transfer itself, into a real engine, is tested in
tests/e2e/test_vllm_engine.py, which shares that engine)."""

import pytest
import torch

pytest.importorskip("vllm")

from open_instruct import weight_sync  # noqa: E402


def test_chunks_respect_byte_budget_and_order():
    tensors = [(f"w{i}", torch.zeros(4, dtype=torch.float32)) for i in range(5)]  # 16 bytes each
    chunks = list(weight_sync._chunks(tensors, max_bytes=40))
    assert [[name for name, _ in c] for c in chunks] == [["w0", "w1"], ["w2", "w3"], ["w4"]]


def test_chunks_let_an_oversized_tensor_travel_alone():
    tensors = [("small", torch.zeros(2)), ("big", torch.zeros(100)), ("tail", torch.zeros(2))]
    chunks = list(weight_sync._chunks(tensors, max_bytes=16))
    assert [[name for name, _ in c] for c in chunks] == [["small"], ["big"], ["tail"]]


def test_update_payload_names_dtypes_shapes():
    payload = weight_sync._update_payload(
        [("a", torch.zeros(2, 3, dtype=torch.bfloat16)), ("b", torch.zeros(4))]
    )
    assert payload == {"names": ["a", "b"], "dtype_names": ["bfloat16", "float32"], "shapes": [[2, 3], [4]]}
