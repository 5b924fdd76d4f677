"""The FLIP reward server over real HTTP (uvicorn on loopback) against the scripted judge: OpenRLHF's protocol,
our batch schema, health, 400s in one line, the bearer token, the request timeout, finishing requests in flight
at shutdown, and a bounded load test: 1,000 rows from 8 concurrent clients, nothing lost or duplicated."""

import asyncio
import contextlib
import json
import threading
import time

import httpx
import pytest

from open_instruct.f1 import f1_score
from open_instruct.flip_reward import FlipReward
from open_instruct.net_utils import free_port
from open_instruct.reward_server import create_app, main
from open_instruct.testing.scripted_judge import Reply, ScriptedJudge, response_of


def judge(messages, n):
    text = response_of(messages)
    if "FAIL" in text:
        return Reply("down", status=500)
    delay = 2.0 if "SLOW" in text else 0.0
    return Reply(json.dumps({"REASONING": "r", "INFERRED INSTRUCTION": f"Write about {text}"}), delay=delay)


@contextlib.contextmanager
def reward_server(judge_server, token=None, request_timeout=60.0, failure_reward=0.0, **judge_settings):
    import uvicorn

    flip = FlipReward("hosted_vllm/scripted", api_base=judge_server.api_base, retries=0, **judge_settings)
    port = free_port()
    config = uvicorn.Config(
        create_app(flip, token, request_timeout, failure_reward),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_openrlhf_protocol_and_a_failed_call():
    prompts = [
        "<|im_start|>user\nWrite about cats<|im_end|>\n",
        "<|im_start|>user\nWrite about dogs<|im_end|>\n",
    ]
    body = {
        "query": [prompts[0] + "cats", prompts[1] + "FAIL"],
        "prompts": prompts,
        "labels": ["Write about cats", "Write about dogs"],
    }
    with ScriptedJudge(judge) as scripted, reward_server(scripted, failure_reward=-1.0) as (url, _):
        answer = httpx.post(f"{url}/get_reward", json=body, timeout=30).json()
        sent = [m[1]["content"] for m in scripted.received]
    assert answer["rewards"] == [1.0, -1.0] and answer["scores"] == answer["rewards"]
    assert answer["extra_logs"]["judge_ok"] == [1.0, 0.0] and answer["extra_logs"]["judge_failures"] == [
        1.0,
        1.0,
    ]
    assert any(
        "<response>\ncats\n</response>" in s for s in sent
    )  # the response alone, not the prompt with it


def test_score_endpoint_and_health():
    rows = [
        {"instruction": "Write about cats please", "response": "cats", "id": 7},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Write about fish"},
            ],
            "response": "fish",
        },
        {"instruction": "Write about dogs", "response": "FAIL"},
    ]
    with ScriptedJudge(judge) as scripted, reward_server(scripted) as (url, _):
        out = httpx.post(f"{url}/score", json={"rows": rows}, timeout=30).json()["rows"]
        health = httpx.get(f"{url}/health").json()
        context_sent = next(m[1]["content"] for m in scripted.received if "fish" in m[1]["content"])
    assert out[0]["id"] == 7 and out[0]["reward"] == pytest.approx(
        f1_score("Write about cats", "Write about cats please")["f1"]
    )
    assert out[1]["reward"] == pytest.approx(1.0) and "user: Hi" in context_sent
    assert out[2]["reward"] is None and out[2]["judge_ok"] is False and out[2]["error"]
    assert health["status"] == "ok" and "hosted_vllm/scripted" in health["judge"]


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("/get_reward", "{not json", "the body is not valid JSON"),
        ("/get_reward", "[1, 2]", "the body must be a JSON object"),
        ("/get_reward", '{"query": ["a"], "prompts": ["a"]}', "field 'labels' must be a list of strings"),
        (
            "/get_reward",
            '{"query": ["a", "b"], "prompts": ["a"], "labels": ["x"]}',
            "query, prompts and labels differ in length (2, 1, 1)",
        ),
        ("/score", '{"rows": []}', "field 'rows' must be a non-empty list"),
        ("/score", '{"rows": [{"instruction": "x"}]}', "row 1: field 'response' is missing or not a string"),
        ("/score", '{"rows": [{"response": "x"}]}', "row 1: needs 'instruction' (a string) or 'messages'"),
    ],
)
def test_malformed_requests_are_400_with_one_line(path, content, message):
    with ScriptedJudge(judge) as scripted, reward_server(scripted) as (url, _):
        r = httpx.post(f"{url}{path}", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"error": message}


def test_bearer_token():
    body = {"query": ["cats"], "prompts": [""], "labels": ["Write about cats"]}
    with ScriptedJudge(judge) as scripted, reward_server(scripted, token="s3cret-token") as (url, _):
        assert httpx.post(f"{url}/get_reward", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.post(f"{url}/get_reward", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret-token"}
        assert httpx.post(f"{url}/get_reward", json=body, headers=right).json()["rewards"] == [1.0]


def test_off_loopback_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("FLIP_REWARD_TOKEN", raising=False)
    args = [
        "--host",
        "0.0.0.0",
        "--llm_judge_model",
        "hosted_vllm/j",
        "--llm_judge_api_base",
        "http://127.0.0.1:1/v1",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --auth_token" in err[0]


def test_a_request_past_its_timeout_is_504():
    body = {"query": ["SLOW"], "prompts": [""], "labels": ["Write about SLOW"]}
    with ScriptedJudge(judge) as scripted, reward_server(scripted, request_timeout=0.5) as (url, _):
        r = httpx.post(f"{url}/get_reward", json=body, timeout=30)
    assert r.status_code == 504 and "0.5 s" in r.json()["error"]


def test_requests_in_flight_finish_at_shutdown():
    body = {"query": ["SLOW"], "prompts": [""], "labels": ["Write about SLOW"]}
    with ScriptedJudge(judge) as scripted, reward_server(scripted) as (url, server):
        result = {}
        client = threading.Thread(
            target=lambda: result.update(r=httpx.post(f"{url}/get_reward", json=body, timeout=30))
        )
        client.start()
        while not scripted.received:
            time.sleep(0.02)
        server.should_exit = True  # what SIGTERM does
        client.join(timeout=30)
    assert result["r"].status_code == 200 and result["r"].json()["rewards"] == [1.0]


@pytest.mark.timeout(180)
def test_load_1000_rows_from_8_clients_nothing_lost_or_duplicated():
    def batch(client: int, k: int) -> dict:
        ids = [f"row{client}x{k}x{j}" for j in range(25)]
        return {"query": ids, "prompts": [""] * 25, "labels": [f"Write about {i}" for i in ids]}

    async def client_run(url: str, client: int) -> list[tuple[str, float]]:
        out = []
        async with httpx.AsyncClient(timeout=120) as http:
            for k in range(5):
                body = batch(client, k)
                answer = (await http.post(f"{url}/get_reward", json=body)).json()
                out += list(zip(body["query"], answer["rewards"], strict=True))
        return out

    async def run_all(url: str):
        return [
            pair for part in await asyncio.gather(*(client_run(url, c) for c in range(8))) for pair in part
        ]

    with ScriptedJudge(judge) as scripted, reward_server(scripted, max_concurrency=32) as (url, _):
        pairs = asyncio.run(run_all(url))
        judged = [response_of(m) for m in scripted.received]
    assert len(pairs) == 1000 and len({q for q, _ in pairs}) == 1000
    assert all(reward == 1.0 for _, reward in pairs)  # each row got its own judge answer back
    assert len(judged) == 1000 and len(set(judged)) == 1000  # one judge call per row
