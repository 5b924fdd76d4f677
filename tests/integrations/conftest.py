import json

import pytest

from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of


def first_word_judge(messages, n):
    """Infers "Write about <the response's first word>"; a response containing FAIL gets a 500."""
    text = response_of(messages)
    if "FAIL" in text:
        return Reply("down", status=500)
    return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Write about " + text.split()[0]}))


@pytest.fixture
def first_word_server():
    with ScriptedJudge(first_word_judge) as server:
        yield server
