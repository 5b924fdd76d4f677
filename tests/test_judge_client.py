"""The judge client against the scripted loopback server: retries, timeouts, concurrency, context guard."""

import asyncio
import json
import time

import pytest

from open_instruct.judge_client import JudgeClient, JudgeConfig, cut_middle, redact
from open_instruct.judge_utils import flip_messages
from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of

OK = json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": "Write a poem."})


def client_for(judge: ScriptedJudge, **overrides) -> JudgeClient:
    config = dict(model="hosted_vllm/scripted", api_base=judge.api_base, backoff_base=0.01, timeout=5.0)
    return JudgeClient(JudgeConfig(**{**config, **overrides}))


def test_success_reports_text_and_usage():
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        client = client_for(judge)
        result = asyncio.run(client.complete(flip_messages("Roses are red.")))
    assert result.ok and result.text == OK and result.attempts == 1
    assert result.completion_tokens == len(OK.split()) and result.prompt_tokens > 0
    assert result.cost == 0.0  # a self-hosted judge has no price
    assert judge.received[0][1]["content"].count("Roses are red.") == 1


def test_5xx_is_retried_then_succeeds():
    with ScriptedJudge(lambda m, n: Reply("busy", status=503) if n < 2 else Reply(OK)) as judge:
        client = client_for(judge, retries=3)
        result = asyncio.run(client.complete(flip_messages("x")))
    assert result.ok and result.attempts == 3
    assert client.stats.retries == 2 and judge.requests == 3


def test_5xx_exhausts_retries_and_fails():
    with ScriptedJudge(lambda m, n: Reply("boom", status=500)) as judge:
        client = client_for(judge, retries=2)
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and result.text is None and result.attempts == 3
    assert "after 3 attempt(s)" in result.error and judge.requests == 3
    assert client.stats.failures == 1


def test_4xx_is_not_retried():
    with ScriptedJudge(lambda m, n: Reply("bad request", status=400)) as judge:
        client = client_for(judge, retries=3)
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and result.attempts == 1 and judge.requests == 1


def test_hang_past_timeout_fails_in_bounded_time():
    with ScriptedJudge(lambda m, n: Reply(OK, delay=30)) as judge:
        client = client_for(judge, timeout=0.3, retries=1)
        start = time.perf_counter()
        result = asyncio.run(client.complete(flip_messages("x")))
        elapsed = time.perf_counter() - start
    assert not result.ok and "timeout after 0.3s" in result.error and result.attempts == 2
    assert elapsed < 3.0


def test_backoff_grows_between_attempts():
    stamps = []

    def handler(m, n):
        stamps.append(time.perf_counter())
        return Reply("x", status=502)

    with ScriptedJudge(handler) as judge:
        client = client_for(judge, retries=3, backoff_base=0.1)
        asyncio.run(client.complete(flip_messages("x")))
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    # nominal waits 0.1, 0.2, 0.4 with +-50% jitter
    assert len(gaps) == 3
    assert 0.05 <= gaps[0] <= 0.3 and 0.1 <= gaps[1] <= 0.5 and 0.2 <= gaps[2] <= 0.9


def test_unreachable_endpoint_is_flagged():
    port = free_port()  # nothing listens there
    client = JudgeClient(
        JudgeConfig("hosted_vllm/x", api_base=f"http://127.0.0.1:{port}/v1", retries=1, backoff_base=0.01)
    )
    result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and result.unreachable and client.stats.unreachable == 1


@pytest.mark.parametrize("cap,server_cap,expected", [(8, 64, 8), (64, 16, 16)])
def test_concurrency_is_reached_and_bounded(cap, server_cap, expected):
    with ScriptedJudge(lambda m, n: Reply(OK, delay=0.2), max_concurrency=server_cap) as judge:
        client = client_for(judge, max_concurrency=cap)

        async def many():
            return await asyncio.gather(*(client.complete(flip_messages(str(i))) for i in range(40)))

        results = asyncio.run(many())
    assert all(r.ok for r in results)
    assert judge.max_in_flight == expected
    assert client.stats.max_in_flight == min(cap, 40)


def test_context_guard_keeps_head_and_tail():
    long_response = "HEAD " + "filler words here " * 3000 + " TAIL"
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        client = client_for(judge, max_context_length=1200, max_tokens=200)
        result = asyncio.run(client.judge(lambda r: flip_messages(r), long_response))
    sent = response_of(judge.received[0])
    assert result.ok and result.truncated and client.stats.truncated == 1
    assert sent.startswith("HEAD") and sent.endswith("TAIL") and "characters omitted" in sent
    assert client.count_tokens(judge.received[0]) <= 1000


def test_short_prompt_is_not_cut():
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        client = client_for(judge)
        result = asyncio.run(client.judge(lambda r: flip_messages(r), "short answer"))
    assert not result.truncated and response_of(judge.received[0]) == "short answer"


def test_api_key_never_appears_in_errors():
    key = "sk-test-0123456789abcdefSECRET"

    def handler(m, n):  # a server that echoes the key back in its error
        return Reply(f"invalid key {key}", status=500)

    with ScriptedJudge(handler) as judge:
        client = client_for(judge, api_key=key, retries=0)
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and key not in result.error and "SECRET" not in result.error


def test_redact_and_cut_middle_helpers():
    assert redact("token abc123456 and sk-abcdefghijklmnop", ["abc123456"]) == "token *** and sk-***"
    cut = cut_middle("a" * 50 + "b" * 50, 30)
    assert cut.startswith("a" * 20) and cut.endswith("b" * 10) and "[... 70 characters omitted ...]" in cut
    assert cut_middle("short", 30) == "short"
