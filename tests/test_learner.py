"""The DeepSpeed learner's JIT-build environment. Gradient accumulation with real DeepSpeed engines is tested in
tests/e2e/test_learner_accumulation.py."""

from pathlib import Path

import pytest

from open_instruct.learner import jit_arch_list

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9.0a", "9.0"),
        ("8.0;9.0a", "8.0;9.0"),
        ("7.5 8.6+PTX 9.0a+PTX", "7.5 8.6+PTX 9.0+PTX"),
        ("10.0f;12.0a", "10.0;12.0"),
        ("8.0;9.0", "8.0;9.0"),
    ],
)
def test_arch_list_drops_the_arch_specific_suffix_deepspeed_cannot_parse(value, expected):
    assert jit_arch_list(value) == expected
