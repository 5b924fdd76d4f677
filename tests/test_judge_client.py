"""The judge client against the scripted loopback server: retries, timeouts, concurrency, context guard."""

import asyncio
import json
import time

import pytest

from open_instruct.judge_client import JudgeClient, JudgeConfig, cut_middle, redact
from open_instruct.judge_utils import flip_messages
from open_instruct.net_utils import free_port
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, ScriptedJudgeProcess, response_of

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


def test_thinking_and_structured_output_are_sent_only_when_asked():
    """Unset: the request carries neither (the server's defaults, as the published recipe ran). Set: the chat
    template's enable_thinking, and the judge type's JSON schema."""
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        asyncio.run(client_for(judge).judge(flip_messages, "Roses are red.", judge_type="flip"))
        asked = client_for(judge, enable_thinking=False, structured_output=True)
        asyncio.run(asked.judge(flip_messages, "Roses are red.", judge_type="flip"))
        asyncio.run(asked.complete(flip_messages("no judge type")))  # a ping: no schema to ask for
    plain, structured, ping = judge.bodies
    assert not {"chat_template_kwargs", "structured_outputs", "response_format"} & set(plain)
    assert structured["chat_template_kwargs"] == {"enable_thinking": False}
    assert structured["response_format"]["type"] == "json_schema"
    schema = structured["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["REASONING", "INFERRED INSTRUCTION"] and not schema["additionalProperties"]
    assert "response_format" not in ping and ping["chat_template_kwargs"] == {"enable_thinking": False}
    # a judge of another provider gets the same (litellm passes it on)
    other = JudgeClient(JudgeConfig("openai/gpt-4o-mini", structured_output=True)).request_options("pairwise")
    assert other["response_format"]["json_schema"]["schema"]["properties"]["BETTER_RESPONSE"]["enum"] == [
        "A",
        "B",
    ]


def test_the_same_prompt_with_another_schema_is_another_request():
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        client = client_for(judge, structured_output=True)
        for judge_type in ("quality", "quality", "pairwise"):
            asyncio.run(client.complete(flip_messages("same"), judge_type))
    assert judge.requests == 2 and client.stats.deduplicated == 1


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


# --------------------------------------------------------------------------------------------------
# Several replicas (judge_endpoints.py)


def replicas_client(judges, **overrides) -> JudgeClient:
    bases = ",".join(j.api_base for j in judges)
    return JudgeClient(JudgeConfig("hosted_vllm/scripted", api_base=bases, backoff_base=0.01, **overrides))


def many(client: JudgeClient, n: int, tag: str = "r") -> list:
    async def run():
        return await asyncio.gather(*(client.complete(flip_messages(f"{tag}{i}")) for i in range(n)))

    return asyncio.run(run())


def test_requests_spread_over_replicas_each_capped_at_max_concurrency():
    with (
        ScriptedJudge(lambda m, n: Reply(OK, delay=0.2)) as a,
        ScriptedJudge(lambda m, n: Reply(OK, delay=0.2)) as b,
    ):
        client = replicas_client([a, b], max_concurrency=8)
        results = many(client, 40)
    assert all(r.ok for r in results)
    # 16 at a time, 8 at each; a replica that frees its slots first takes the next ones, so the last
    # wave may go to one of them
    assert a.requests + b.requests == 40 and min(a.requests, b.requests) >= 16
    assert a.max_in_flight == b.max_in_flight == 8 and client.stats.max_in_flight == 16


def test_a_failing_replica_leaves_rotation_and_its_requests_succeed_on_another():
    with (
        ScriptedJudge(lambda m, n: Reply("down", status=503)) as bad,
        ScriptedJudge(lambda m, n: Reply(OK, delay=0.05)) as good,
    ):
        client = replicas_client([bad, good], retries=0, endpoint_cooldown=60)
        burst = many(client, 30)  # sent together: half go to `bad` before its first failure is known
        sent_to_bad = bad.requests
        after = many(client, 30, tag="s")
    assert all(r.ok for r in burst + after)  # no retries to spend: failover is not a retry
    assert 0 < sent_to_bad <= 15 and bad.requests == sent_to_bad  # then out of rotation
    assert good.requests == 60 and client.stats.failovers == sent_to_bad and client.stats.failures == 0


def test_a_replica_that_is_not_there_is_skipped_without_failing_the_run():
    with ScriptedJudge(lambda m, n: Reply(OK)) as good:
        dead = f"http://127.0.0.1:{free_port()}/v1"
        client = JudgeClient(
            JudgeConfig("hosted_vllm/scripted", api_base=f"{dead},{good.api_base}", retries=0)
        )
        results = many(client, 10)
    assert all(r.ok for r in results) and client.stats.unreachable == 0
    assert client.pool.failures[0] >= 1 and good.requests == 10


def test_a_replica_returns_to_rotation_after_its_cooldown():
    def flaky(m, n):  # its first request fails, then it serves
        return Reply("restarting", status=502) if n == 0 else Reply(OK, delay=0.02)

    with ScriptedJudge(flaky) as a, ScriptedJudge(lambda m, n: Reply(OK, delay=0.02)) as b:
        client = replicas_client([a, b], endpoint_cooldown=0.3, max_concurrency=1)
        first = many(client, 6)
        served_while_out = a.requests
        time.sleep(0.35)
        later = many(client, 6, tag="s")
    assert all(r.ok for r in first + later)
    assert served_while_out == 1 and a.requests > 1  # back in rotation once the cool-down passed


def test_a_replica_killed_mid_request_loses_no_reward():
    with (
        ScriptedJudgeProcess(lambda m, n: Reply(OK, delay=0.5)) as doomed,
        ScriptedJudgeProcess(lambda m, n: Reply(OK, delay=0.1)) as survivor,
    ):
        client = JudgeClient(
            JudgeConfig("hosted_vllm/scripted", api_base=f"{doomed.api_base},{survivor.api_base}", retries=0)
        )

        async def run():
            calls = asyncio.gather(*(client.complete(flip_messages(f"r{i}")) for i in range(40)))
            await asyncio.sleep(0.25)  # half of them are held by the doomed replica
            doomed.kill()
            return await calls

        results = asyncio.run(run())
    assert all(r.ok for r in results) and client.stats.failovers >= 1 and client.stats.failures == 0


def test_all_replicas_down_fails_after_the_retries():
    with (
        ScriptedJudge(lambda m, n: Reply("x", status=500)) as a,
        ScriptedJudge(lambda m, n: Reply("x", status=500)) as b,
    ):
        client = replicas_client([a, b], retries=2)
        result = asyncio.run(client.complete(flip_messages("x")))
    # the first round tries both; then both cool down, and each retry goes to the one back first
    assert not result.ok and result.attempts == 4 and a.requests + b.requests == 4
    assert client.stats.retries == 2 and client.stats.failures == 1


# --------------------------------------------------------------------------------------------------
# Identical prompts judged once


def test_identical_requests_in_flight_share_one_call():
    with ScriptedJudge(lambda m, n: Reply(OK, delay=0.1)) as judge:
        client = client_for(judge, temperature=0.7)  # sharing in flight holds at any temperature

        async def run():
            return await asyncio.gather(*(client.complete(flip_messages("same")) for _ in range(5)))

        results = asyncio.run(run())
    assert judge.requests == 1 and client.stats.calls == 1 and client.stats.deduplicated == 4
    assert all(r.ok and r.text == OK for r in results)
    assert sum(not r.shared for r in results) == 1
    assert sum(r.completion_tokens for r in results) == len(OK.split())  # usage counted once


def test_answers_are_remembered_at_temperature_zero_only():
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        greedy = client_for(judge)
        first = asyncio.run(greedy.complete(flip_messages("same")))
        again = asyncio.run(greedy.complete(flip_messages("same")))  # a later step, another event loop
        assert judge.requests == 1 and again.shared and again.text == first.text and again.cost == 0.0
        sampled = client_for(judge, temperature=0.7)
        asyncio.run(sampled.complete(flip_messages("same")))
        asyncio.run(sampled.complete(flip_messages("same")))
        assert judge.requests == 3


def test_a_failed_answer_is_not_remembered():
    with ScriptedJudge(lambda m, n: Reply("x", status=500) if n == 0 else Reply(OK)) as judge:
        client = client_for(judge, retries=0)
        assert not asyncio.run(client.complete(flip_messages("same"))).ok
        assert asyncio.run(client.complete(flip_messages("same"))).ok and judge.requests == 2


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch):
    monkeypatch.setenv("HOSTED_VLLM_API_KEY", "k-from-env")
    with ScriptedJudge(lambda m, n: Reply(OK)) as judge:
        asyncio.run(client_for(judge).complete(flip_messages("a")))
        asyncio.run(client_for(judge, api_key="k-given").complete(flip_messages("b")))
    assert judge.authorizations == ["Bearer k-from-env", "Bearer k-given"]


def test_bad_credentials_fail_at_once_and_count_as_unreachable():
    with ScriptedJudge(lambda m, n: Reply("no", status=401)) as judge:
        client = client_for(judge, retries=3)
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and result.unreachable and judge.requests == 1 and "HTTP 401" in result.error


# --------------------------------------------------------------------------------------------------
# Bad answers at volume: bounded in size and time, a failed call, never a hang or a crash


def test_a_50_mb_answer_is_a_failed_call_not_read_in_full():
    with ScriptedJudge(lambda m, n: Reply("x" * 50 * 2**20)) as judge:
        client = client_for(judge, retries=0)
        start = time.perf_counter()
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and "more than 8388608" in result.error and client.stats.failures == 1
    assert time.perf_counter() - start < 30


def test_a_proxys_html_page_with_status_200_is_a_failed_call():
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    with ScriptedJudge(lambda m, n: Reply(raw=page)) as judge:
        result = asyncio.run(client_for(judge, retries=0).complete(flip_messages("x")))
    assert not result.ok and "not JSON (text/html" in result.error and "502 Bad Gateway" in result.error


def test_an_answer_that_never_finishes_times_out():
    with ScriptedJudge(lambda m, n: Reply(stall=True)) as judge:
        client = client_for(judge, timeout=0.5, retries=0)
        start = time.perf_counter()
        result = asyncio.run(client.complete(flip_messages("x")))
    assert not result.ok and "timeout after 0.5s" in result.error and time.perf_counter() - start < 5
