"""Async client for a hosted judge model.

One `JudgeClient` serves every judge call of a process (scoring, training rewards, evaluation):
- bounded concurrency (a semaphore), so a small vLLM server is kept busy but not flooded;
- several replicas of one judge, least outstanding requests first, with failover (judge_endpoints.py);
- a per-request timeout, and retries with exponential backoff and jitter on the errors that pass
  (timeouts, connection errors, 429 and 5xx); other errors (400, 401, 404) fail at once;
- identical prompts judged once: requests in flight together share a call, and answers at temperature 0
  are remembered (GRPO groups often hold the same response twice);
- a context-window guard that shortens over-long texts, keeping head and tail, instead of failing;
- usage and cost per call, and running totals;
- API keys are redacted from every error message it returns.
`hosted_vllm/` judges are called over HTTP directly, every other provider through litellm.
A call that fails after its retries returns `ok=False` with the reason: it is never turned into a score.
"""

import asyncio
import os
import random
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from open_instruct.cli_utils import first_line
from open_instruct.judge_endpoints import DirectHTTP, EndpointPool, parse_api_bases

# litellm fetches a model-price map from the internet at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

Message = dict[str, str]


@dataclass
class JudgeConfig:
    """A judge client's settings. These defaults are the only ones: every command's judge flags take theirs from
    here (judge_config.JUDGE_FLAGS)."""

    model: str
    """litellm model id, e.g. `hosted_vllm/Qwen/Qwen3-4B` or `openai/gpt-4o-mini`."""
    api_base: str | None = None
    """OpenAI-compatible base URL (`http://host:port/v1`), or several replicas of the judge separated by
    commas; for hosted_vllm, HOSTED_VLLM_API_BASE when unset."""
    api_key: str | None = None
    """Key for the endpoint; litellm's provider variables (OPENAI_API_KEY, ...) are used when unset."""
    max_concurrency: int = 64
    """Most judge requests in flight at once, per replica. Above the server's batch size, so the server
    always has the next request queued while this process prepares more."""
    endpoint_cooldown: float = 10.0
    """Seconds a replica whose request failed (connection, timeout, 429, 5xx) stays out of rotation while
    others serve; with one replica nothing is taken out."""
    timeout: float = 600.0
    """Seconds one request may take before it counts as a (retryable) timeout: long enough for a small judge
    on a busy GPU to write its 2048 tokens."""
    retries: int = 3
    """Extra attempts after a retryable failure."""
    backoff_base: float = 0.5
    """First retry waits about this many seconds; each later one twice as long (with +-50% jitter)."""
    backoff_max: float = 8.0
    max_tokens: int = 2048
    """Most tokens the judge may write (`llm_judge_max_tokens` in the published recipe)."""
    temperature: float = 0.0
    enable_thinking: bool | None = None
    """Sent with every request as `chat_template_kwargs: {"enable_thinking": ...}` (vLLM's server passes it to
    the judge's chat template). None sends nothing and the template decides: Qwen3's thinks, as the published
    recipe's judge did. False makes a Qwen3 judge answer at once: a FLIP answer is one sentence, and a thinking
    answer that `max_tokens` cuts off inside its reasoning has no answer at all (it counts as unparsed and is
    not rewarded)."""
    structured_output: bool = False
    """Ask the server for the judge type's JSON (`response_format` with a JSON schema, vLLM's structured
    outputs), so every answer that ends within max_tokens parses; the judge then writes JSON from its first
    token, with no room to think."""
    max_context_length: int = 25000
    """Judge context window in tokens; longer prompts have their long texts cut in the middle."""
    cache_size: int = 4096
    """Answers remembered at temperature 0, so an identical prompt is judged once; 0 turns it off. Identical
    requests in flight at the same time share one call at any temperature."""


@dataclass
class JudgeResult:
    text: str | None
    ok: bool
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    truncated: bool = False
    unreachable: bool = False
    """The failure was a refused connection, an unknown model or bad credentials: no use retrying later."""
    shared: bool = False
    """Another identical request's answer (in flight together, or remembered): no call of its own, so no cost
    or usage counted here."""


@dataclass
class JudgeStats:
    calls: int = 0
    failures: int = 0
    unreachable: int = 0
    retries: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    max_in_flight: int = 0
    deduplicated: int = 0
    """Requests answered by an identical request's call."""
    failovers: int = 0
    """Requests sent on to another replica after one failed."""
    errors: dict[str, int] = field(default_factory=dict)


def secret_values() -> list[str]:
    """Values of environment variables that look like credentials, to redact from messages."""
    names = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD)", re.I)
    return [v for k, v in os.environ.items() if names.search(k) and len(v) >= 6]


def redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return re.sub(r"(sk-|hf_|key-)[A-Za-z0-9_\-]{8,}", r"\1***", text)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500 or status == 408
    name = type(exc).__name__
    return name in {
        "Timeout",
        "APIConnectionError",
        "APITimeoutError",
        "InternalServerError",
        "ServiceUnavailableError",
        "BadGatewayError",
        "RateLimitError",
    }


_REFUSED = re.compile(
    r"cannot connect to host|connection refused|connect call failed|name or service not known", re.I
)


def _is_unreachable(exc: BaseException) -> bool:
    """A refused connection, an unknown host or model, or rejected credentials. litellm wraps a refused
    connection in various error types, so the cause chain and the message are checked too."""
    status = getattr(exc, "status_code", None)
    if type(exc).__name__ in {"NotFoundError", "AuthenticationError"} or status in (401, 404):
        return True
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError) or _REFUSED.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _short(exc: BaseException) -> str:
    msg = first_line(exc)
    return f"{type(exc).__name__}: {msg}" if str(exc).strip() else type(exc).__name__


def cut_middle(text: str, keep_chars: int) -> str:
    """Keep the head and the tail of `text`, `keep_chars` characters in all, with a marker between."""
    if len(text) <= keep_chars:
        return text
    head = keep_chars * 2 // 3
    tail = keep_chars - head
    omitted = len(text) - head - tail
    return f"{text[:head]}\n[... {omitted} characters omitted ...]\n{text[len(text) - tail :]}"


class JudgeClient:
    def __init__(self, config: JudgeConfig):
        import litellm  # slow import; deferred so `--help` stays fast

        litellm.suppress_debug_info = True
        self._litellm = litellm
        self.config = config
        self.direct = config.model.startswith("hosted_vllm/")
        bases = parse_api_bases(config.api_base) or (
            parse_api_bases(os.environ.get("HOSTED_VLLM_API_BASE")) if self.direct else []
        )
        self.pool = EndpointPool(bases or [None], config.endpoint_cooldown, cap=config.max_concurrency)
        self.stats = JudgeStats()
        self._secrets = [s for s in [config.api_key, *secret_values()] if s]
        self._http = DirectHTTP()
        # Per event loop: a semaphore and a pending task belong to their loop (sync callers run a loop each).
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._pending: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._answers: OrderedDict = OrderedDict()
        self._in_flight = 0

    @property
    def api_bases(self) -> list[str]:
        return [b for b in self.pool.bases if b]

    @property
    def endpoint(self) -> str:
        return f"{self.config.model} at {', '.join(self.api_bases)}" if self.api_bases else self.config.model

    def count_tokens(self, messages: list[Message]) -> int:
        try:
            return int(self._litellm.token_counter(model=self.config.model, messages=messages))
        except Exception:  # unknown tokenizer: a conservative 3 characters per token  # noqa: BLE001
            return sum(len(m["content"]) for m in messages) // 3 + 8 * len(messages)

    def fit_context(
        self, build: Callable[..., list[Message]], texts: list[str]
    ) -> tuple[list[Message], bool]:
        """Build messages from `texts`; while they exceed the context window, cut the texts in the middle."""
        budget = self.config.max_context_length - self.config.max_tokens
        messages = build(*texts)
        # A token spans at least one character in practice: a prompt with fewer characters than the budget
        # fits without tokenizing it (the usual case, and a hot path).
        if sum(len(m["content"]) for m in messages) + 16 * len(messages) <= budget:
            return messages, False
        tokens = self.count_tokens(messages)
        if tokens <= budget:
            return messages, False
        fixed = self.count_tokens(build(*["" for _ in texts]))
        for _ in range(6):
            room = max(budget - fixed, 0)
            used = max(tokens - fixed, 1)
            ratio = room / used * 0.9
            texts = [cut_middle(t, int(len(t) * ratio)) for t in texts]
            messages = build(*texts)
            tokens = self.count_tokens(messages)
            if tokens <= budget:
                break
        return messages, True

    async def judge(
        self, build: Callable[..., list[Message]], *texts: str, judge_type: str | None = None
    ) -> JudgeResult:
        """Call the judge on `build(*texts)`, shortening the texts first if the prompt would not fit.
        `judge_type` (judge_utils.JUDGE_TYPES) is the JSON schema asked for under `structured_output`."""
        messages, truncated = self.fit_context(build, list(texts))
        result = await self.complete(messages, judge_type)
        if truncated and not result.truncated:
            result = replace(result, truncated=True)
        self.stats.truncated += int(truncated)
        return result

    async def complete(self, messages: list[Message], judge_type: str | None = None) -> JudgeResult:
        """The judge's answer to `messages`: one call of its own, or the answer to an identical request."""
        key = (judge_type, *((m["role"], m["content"]) for m in messages))
        remembered = self._answers.get(key)
        if remembered is not None:
            self._answers.move_to_end(key)
            self.stats.deduplicated += 1
            return _shared(remembered)
        pending = self._pending.setdefault(asyncio.get_running_loop(), {})
        task = pending.get(key)
        if task is not None:
            self.stats.deduplicated += 1
            return _shared(await asyncio.shield(task))
        task = asyncio.ensure_future(self._call(messages, judge_type))
        pending[key] = task
        task.add_done_callback(lambda t: self._settle(pending, key, t))
        return await asyncio.shield(task)

    def _settle(self, pending: dict, key: tuple, task: asyncio.Task) -> None:
        pending.pop(key, None)
        if task.cancelled() or task.exception() is not None:
            return
        result = task.result()
        if result.ok and self.config.temperature == 0 and self.config.cache_size > 0:
            self._answers[key] = result
            if len(self._answers) > self.config.cache_size:
                self._answers.popitem(last=False)

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.config.max_concurrency * len(self.pool))
        return self._semaphores[loop]

    async def _call(self, messages: list[Message], judge_type: str | None) -> JudgeResult:
        """One judge call: to the least busy replica; on a retryable failure, at once to a replica not yet
        tried, and when none is left, after a backoff to any (each backoff spends one of `retries`)."""
        cfg, pool, semaphore = self.config, self.pool, self._semaphore()
        start, attempts, backoffs, tried = time.perf_counter(), 0, 0, set()
        self.stats.calls += 1
        while True:
            attempts += 1
            async with semaphore:
                i = pool.pick(tried)
                i = pool.pick_any() if i is None else i
                pool.outstanding[i] += 1
                self._in_flight += 1
                self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
                try:
                    answer = await asyncio.wait_for(
                        self._request(pool.bases[i], messages, judge_type), cfg.timeout
                    )
                    error = None
                except Exception as exc:  # noqa: BLE001
                    error = exc
                finally:
                    pool.outstanding[i] -= 1
                    self._in_flight -= 1
            if error is None:
                return self._success(*answer, attempts, time.perf_counter() - start)
            if not _is_retryable(error):
                break
            pool.fail(i, self._describe(error))
            tried.add(i)
            if pool.pick(tried) is not None:
                self.stats.failovers += 1
                continue
            if backoffs == cfg.retries:
                break
            backoffs += 1
            self.stats.retries += 1
            tried = set()
            delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (backoffs - 1))
            await asyncio.sleep(delay * (0.5 + random.random()))
        return self._failure(error, attempts, time.perf_counter() - start)

    def request_options(self, judge_type: str | None) -> dict:
        """What a request carries besides the messages and sampling settings: the chat template's
        enable_thinking and, under structured_output, the judge type's JSON schema as OpenAI's
        `response_format` (vLLM turns it into its structured outputs)."""
        from open_instruct.judge_utils import response_format

        options: dict = {}
        if self.config.enable_thinking is not None:
            options["chat_template_kwargs"] = {"enable_thinking": self.config.enable_thinking}
        if self.config.structured_output and judge_type is not None:
            options["response_format"] = response_format(judge_type)
        return options

    async def _request(
        self, api_base: str | None, messages: list[Message], judge_type: str | None
    ) -> tuple[str, int, int, float]:
        """(text, prompt tokens, completion tokens, cost) of one request to one replica."""
        cfg = self.config
        options = self.request_options(judge_type)
        if self.direct:
            payload = dict(
                model=cfg.model.split("/", 1)[1],
                messages=messages,
                max_tokens=cfg.max_tokens,
                temperature=cfg.temperature,
                **options,
            )
            data = await self._http.chat(
                api_base, payload, cfg.api_key or os.environ.get("HOSTED_VLLM_API_KEY")
            )
            usage = data.get("usage") or {}
            text = answer_text(data["choices"][0]["message"])
            return text, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), 0.0
        kwargs = dict(
            model=cfg.model,
            messages=messages,
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            timeout=cfg.timeout,
            num_retries=0,  # retries are ours, with backoff and accounting
        )
        if "response_format" in options:
            kwargs["response_format"] = options["response_format"]
        if "chat_template_kwargs" in options:  # litellm passes extra_body through to the server
            kwargs["extra_body"] = {"chat_template_kwargs": options["chat_template_kwargs"]}
        if api_base:
            kwargs["api_base"] = api_base
        if cfg.api_key:
            kwargs["api_key"] = cfg.api_key
        response = await self._litellm.acompletion(**kwargs)
        usage = getattr(response, "usage", None)
        message = response.choices[0].message
        return (
            answer_text(
                {"content": message.content, "reasoning_content": getattr(message, "reasoning_content", None)}
            ),
            int(getattr(usage, "prompt_tokens", 0) or 0),
            int(getattr(usage, "completion_tokens", 0) or 0),
            float((getattr(response, "_hidden_params", None) or {}).get("response_cost") or 0.0),
        )

    async def aclose(self) -> None:
        """Close the HTTP session of the running loop (the process's connections to the judge)."""
        await self._http.close()

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return f"timeout after {self.config.timeout:g}s"
        return redact(_short(exc), self._secrets)

    def _success(
        self,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
        attempts: int,
        seconds: float,
    ) -> JudgeResult:
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.cost += cost
        return JudgeResult(text, True, None, attempts, prompt_tokens, completion_tokens, cost, seconds)

    def _failure(self, exc: BaseException | None, attempts: int, seconds: float) -> JudgeResult:
        kind = type(exc).__name__ if exc else "Unknown"
        message = self._describe(exc) if exc else "unknown error"
        unreachable = exc is not None and _is_unreachable(exc)
        self.stats.failures += 1
        self.stats.unreachable += int(unreachable)
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
        return JudgeResult(
            None,
            False,
            f"judge call failed after {attempts} attempt(s): {message}",
            attempts,
            seconds=seconds,
            unreachable=unreachable,
        )


def answer_text(message: dict) -> str:
    """The judge's answer as one text. A server with a reasoning parser returns the reasoning apart
    (`reasoning_content`, or `reasoning`): it is put back as a <think> block, left open when no answer
    follows it, so an answer cut off inside its reasoning reads the same either way (judge_utils.cut_in_reasoning)."""
    content = message.get("content") or ""
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if not reasoning:
        return content
    return f"<think>{reasoning}</think>{content}" if content.strip() else f"<think>{reasoning}"


def _shared(result: JudgeResult) -> JudgeResult:
    """`result` as the answer to an identical request: the same text, no cost or usage of its own."""
    return replace(result, cost=0.0, prompt_tokens=0, completion_tokens=0, seconds=0.0, shared=True)
