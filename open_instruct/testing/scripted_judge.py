"""A scripted OpenAI-compatible judge server on loopback, for exact reward checks, fault injection and
benchmarks. It is never a stand-in for the real vLLM server in end-to-end tests.

A handler decides each reply from the request's messages:

    def handler(messages, n):            # n counts requests from 0
        return Reply(text='{"INFERRED INSTRUCTION": "Write a poem."}', delay=0.1)

    with ScriptedJudge(handler, max_concurrency=32) as judge:
        client = JudgeClient(JudgeConfig("hosted_vllm/scripted", api_base=judge.api_base))

`Reply(status=500)` answers an error; `Reply(delay=...)` holds the request (a hang, past a timeout);
`Reply(raw=...)` answers a body that is not a completion; `Reply(stall=True)` starts an answer and never ends it.
At most `max_concurrency` requests are served at once; the rest wait, as on a real server.
`ScriptedJudge` runs in a thread of the calling process (its counters can be read directly);
`ScriptedJudgeProcess` (and `scripted_judge_process`) runs one in a child process, so that timing the
client is not skewed by the server sharing its interpreter, and so that it can be killed mid-request.
"""

import asyncio
import contextlib
import multiprocessing
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from open_instruct.judge_utils import JUDGE_TYPES
from open_instruct.net_utils import free_port
from open_instruct.prompts import load_prompt


@dataclass
class Reply:
    text: str = ""
    status: int = 200
    delay: float = 0.0
    raw: str | None = None
    """A body sent as it is (text/html), in place of the chat completion: a proxy's error page."""
    stall: bool = False
    """Send the headers and half of the answer, then never finish it."""
    reasoning: str | None = None
    """Sent apart as `reasoning_content`, as vLLM's server does with a reasoning parser."""
    finish_reason: str = "stop"


Handler = Callable[[list[dict], int], Reply]


def response_of(messages: list[dict]) -> str:
    """The response a FLIP prompt carries between <response> tags (what the judge is asked about)."""
    m = re.search(r"<response>\n(.*)\n</response>", messages[-1]["content"], flags=re.S)
    return m.group(1) if m else ""


def judge_type_of(messages: list[dict]) -> str | None:
    """Which judge type in judge_utils.JUDGE_TYPES sent these messages, told by their system prompt."""
    for name, judge_type in JUDGE_TYPES.items():
        if messages and messages[0]["content"] == load_prompt(judge_type.system_prompt):
            return name
    return None


def request_of(messages: list[dict]) -> str:
    """The user request an LLM-judge prompt (pointwise, pairwise, listwise) carries between <request> tags."""
    m = re.search(r"<request>\n(.*?)\n</request>", messages[-1]["content"], flags=re.S)
    return m.group(1) if m else ""


def replies_of(messages: list[dict]) -> list[str]:
    """The replies an LLM-judge prompt carries, in the order shown: one (pointwise), A then B (pairwise),
    or every numbered one (listwise)."""
    pattern = r'<reply(?:_[AB]| index="\d+")?>\n(.*?)\n</reply(?:_[AB])?>'
    return re.findall(pattern, messages[-1]["content"], flags=re.S)


class ScriptedJudge:
    def __init__(self, handler: Handler, max_concurrency: int = 64, port: int | None = None):
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.port = port or free_port()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.received: list[list[dict]] = []
        self.bodies: list[dict] = []  # every request body, whole
        self.authorizations: list[str | None] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        n = self.requests
        self.requests += 1
        self.received.append(body["messages"])
        self.bodies.append(body)
        self.authorizations.append(request.headers.get("Authorization"))
        async with self._semaphore:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                reply = self.handler(body["messages"], n)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
            finally:
                self.in_flight -= 1
        if reply.raw is not None:
            return web.Response(text=reply.raw, status=reply.status, content_type="text/html")
        if reply.status != 200:
            return web.json_response(
                {"error": {"message": f"scripted error {reply.status}"}}, status=reply.status
            )
        if reply.stall:
            stream = web.StreamResponse(headers={"Content-Type": "application/json"})
            await stream.prepare(request)
            await stream.write(b'{"id": "chatcmpl-stalled", "choices": [{"index": 0, "message": {"con')
            await asyncio.sleep(3600)
        return web.json_response(
            {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": reply.finish_reason,
                        "message": {
                            "role": "assistant",
                            "content": reply.text,
                            **({"reasoning_content": reply.reasoning} if reply.reasoning is not None else {}),
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": sum(len(m["content"].split()) for m in body["messages"]),
                    "completion_tokens": len(reply.text.split()),
                    "total_tokens": 0,
                },
            }
        )

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

    async def _serve(self) -> None:
        self._semaphore = asyncio.Semaphore(self.max_concurrency)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # backlog well above the concurrency so queued clients are not refused
        await web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024, shutdown_timeout=0.5).start()
        self._started.set()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        # Requests still held by a scripted hang are cancelled, not left pending at loop stop.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def start(self) -> "ScriptedJudge":
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="scripted-judge")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("scripted judge did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> "ScriptedJudge":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class ScriptedJudgeProcess:
    """A scripted judge in a forked child process (its own interpreter, as a real server); `kill()` ends it
    abruptly, as a lost node would, with its requests in flight."""

    def __init__(self, handler: Handler, max_concurrency: int = 64, port: int | None = None):
        self.port = port or free_port()
        self.api_base = f"http://127.0.0.1:{self.port}/v1"
        ready = multiprocessing.get_context("fork").Event()

        def serve() -> None:
            judge = ScriptedJudge(handler, max_concurrency, self.port).start()
            ready.set()
            judge._thread.join()

        self.process = multiprocessing.get_context("fork").Process(target=serve, daemon=True)
        self.process.start()
        if not ready.wait(15):
            self.kill()
            raise RuntimeError("scripted judge process did not start")

    def kill(self) -> None:
        self.process.kill()
        self.process.join(5)

    def __enter__(self) -> "ScriptedJudgeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


@contextlib.contextmanager
def scripted_judge_process(handler: Handler, max_concurrency: int = 64):
    """Serve `handler` from a forked child process; yields the api base URL."""
    with ScriptedJudgeProcess(handler, max_concurrency) as judge:
        yield judge.api_base
