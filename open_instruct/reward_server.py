"""`python -m open_instruct.reward_server`: FLIP over HTTP, for any RL framework.

    python -m open_instruct.reward_server --llm_judge_model hosted_vllm/Qwen/Qwen3-4B \\
        --llm_judge_api_base http://127.0.0.1:8000/v1 [--host 127.0.0.1] [--port 8100]

Endpoints:
  POST /get_reward  OpenRLHF's remote reward protocol: {"query": [...], "prompts": [...], "labels": [...]}, where
                    query[i] is prompt + response as the policy saw it, prompts[i] the prompt text and labels[i]
                    the instruction. Answers {"rewards": [...], "scores": [...], "extra_logs": {"judge_ok": [...],
                    "parsed": [...], "judge_failures": [n]}}. OpenRLHF needs a number for every sample, so a
                    failed judge call scores --failure_reward (default 0.0) and is counted in extra_logs.
  POST /score       our own schema, like `flip score`: {"rows": [{"instruction" | "messages", "response"}, ...]}
                    -> {"rows": [{..., "reward" (null when the judge failed), "inferred_instruction", ...}]}
  GET  /health      {"status": "ok", "judge": ..., "in_flight": n}

All requests share one judge client, so --llm_judge_max_concurrency bounds the judge calls of every request
together. A request that takes longer than --request_timeout answers 504. SIGTERM or Ctrl-C stops taking new
requests and lets those in flight finish. It listens on loopback by default; any other address requires a
bearer token (--auth_token or $FLIP_REWARD_TOKEN), since whoever reaches an open reward server can feed rewards
into training. Malformed requests answer 400 with one line saying what is wrong.
"""

import argparse
import asyncio
import contextlib
import hmac
import os
import signal
import sys

from open_instruct.cli_utils import UserError, run_command
from open_instruct.flip_reward import FlipResult, FlipReward
from open_instruct.judge_config import add_judge_flags, judge_config, judge_problem, positive_float

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BadRequest(Exception):
    """A request the server cannot read: answered 400 with this one line."""


def _strings(body: dict, key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"field '{key}' must be a list of strings")
    return value


def openrlhf_rows(body: dict) -> tuple[list[str], list[str]]:
    """(instructions, responses) from an OpenRLHF request; the response is the query after its prompt."""
    queries, prompts, labels = _strings(body, "query"), _strings(body, "prompts"), _strings(body, "labels")
    if not len(queries) == len(prompts) == len(labels):
        raise BadRequest(
            f"query, prompts and labels differ in length ({len(queries)}, {len(prompts)}, {len(labels)})"
        )
    responses = [q[len(p) :] if q.startswith(p) else q for q, p in zip(queries, prompts, strict=True)]
    return labels, responses


def score_rows(body: dict) -> tuple[list[str], list[str], list[list[dict]], list[dict]]:
    """(instructions, responses, contexts, rows) from a /score request."""
    from open_instruct.ground_truth_utils import split_conversation
    from open_instruct.judge_config import prompt_messages

    rows = body.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BadRequest("field 'rows' must be a non-empty list")
    instructions, responses, contexts = [], [], []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not isinstance(row.get("response"), str):
            raise BadRequest(f"row {i}: field 'response' is missing or not a string")
        try:
            context, instruction = split_conversation(prompt_messages(row, f"row {i}"))
        except UserError as e:
            raise BadRequest(str(e)) from None
        instructions.append(instruction)
        responses.append(row["response"])
        contexts.append(context)
    return instructions, responses, contexts, rows


def result_fields(r: FlipResult) -> dict:
    return {
        "reward": r.reward,
        "precision": r.precision,
        "recall": r.recall,
        "inferred_instruction": r.inferred_instruction,
        "judge_ok": r.judge_ok,
        "parsed": r.parsed,
        "error": r.error,
        "judge_output": r.judge_output,
    }


def create_app(flip: FlipReward, token: str | None, request_timeout: float, failure_reward: float):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="FLIP reward server", docs_url=None, redoc_url=None)
    state = {"in_flight": 0}

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"error": str(exc)}, status_code=400)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        state["in_flight"] += 1
        try:
            return await asyncio.wait_for(call_next(request), request_timeout)
        except TimeoutError:
            return JSONResponse({"error": f"not answered within {request_timeout:g} s"}, status_code=504)
        finally:
            state["in_flight"] -= 1

    async def read(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            raise BadRequest("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "judge": flip.client.endpoint, "in_flight": state["in_flight"]}

    @app.post("/get_reward")
    async def get_reward(request: Request):
        instructions, responses = openrlhf_rows(await read(request))
        results = await flip.ascore(instructions, responses)
        rewards = [r.reward if r.reward is not None else failure_reward for r in results]
        return {
            "rewards": rewards,
            "scores": rewards,
            "extra_logs": {
                "judge_ok": [float(r.judge_ok) for r in results],
                "parsed": [float(r.parsed) for r in results],
                "judge_failures": [float(sum(not r.judge_ok for r in results))] * len(results),
            },
        }

    @app.post("/score")
    async def score(request: Request):
        instructions, responses, contexts, rows = score_rows(await read(request))
        results = await flip.ascore(instructions, responses, contexts)
        return {"rows": [{**row, **result_fields(r)} for row, r in zip(rows, results, strict=True)]}

    return app


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, but a stop signal ends it with status 0: uvicorn re-raises the signal once it has
        shut down, which would make a clean stop look like a crash to a launcher."""

        @contextlib.contextmanager
        def capture_signals(self):
            def stop(signum, frame):
                self.should_exit = True

            previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    return Server


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m open_instruct.reward_server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    p.add_argument(
        "--auth_token",
        default=os.environ.get("FLIP_REWARD_TOKEN"),
        help="bearer token every request must carry (default $FLIP_REWARD_TOKEN); required off loopback",
    )
    p.add_argument(
        "--request_timeout",
        type=positive_float,
        default=900.0,
        help="seconds one request may take (default 900)",
    )
    p.add_argument(
        "--failure_reward",
        type=float,
        default=0.0,
        help="the reward /get_reward gives a sample whose judge call failed (OpenRLHF needs a number; default 0.0)",
    )
    p.add_argument(
        "--llm_judge_on_unparsed",
        choices=["raw", "fail"],
        default="raw",
        help="judge answered but no instruction parsed: 'raw' scores F1 against the raw answer; 'fail' no reward",
    )
    add_judge_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        import uvicorn

        if args.host not in LOOPBACK and not args.auth_token:
            raise UserError(
                f"--host {args.host}: a reward server off loopback needs --auth_token (or $FLIP_REWARD_TOKEN)"
            )
        problem = judge_problem(args.llm_judge_model, args.llm_judge_api_base)
        if problem:
            raise UserError(problem)
        settings = judge_config(args)
        flip = FlipReward(
            settings.model,
            settings.api_base,
            on_unparsed=args.llm_judge_on_unparsed,
            echo_overlap_max=args.flip_echo_overlap_max,
            **{k: v for k, v in vars(settings).items() if k not in ("model", "api_base")},
        )
        app = create_app(flip, args.auth_token, args.request_timeout, args.failure_reward)
        server = _server_class()(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
        print(
            f"FLIP reward server on http://{args.host}:{args.port} (judge {flip.client.endpoint})", flush=True
        )
        server.run()  # until SIGTERM or Ctrl-C: it stops taking connections and lets those in flight finish
        print("FLIP reward server stopped", flush=True)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
