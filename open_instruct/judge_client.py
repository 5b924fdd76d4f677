"""Async client for a hosted judge model, over litellm.

One `JudgeClient` serves every judge call of a process (scoring, training rewards, evaluation):
- bounded concurrency (a semaphore), so a small vLLM server is kept busy but not flooded;
- a per-request timeout, and retries with exponential backoff and jitter on the errors that pass
  (timeouts, connection errors, 429 and 5xx); other errors (400, 401, 404) fail at once;
- a context-window guard that shortens over-long texts, keeping head and tail, instead of failing;
- usage and cost per call, and running totals;
- API keys are redacted from every error message it returns.
A call that fails after its retries returns `ok=False` with the reason: it is never turned into a score.
"""

import asyncio
import logging
import os
import random
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from open_instruct.cli_utils import first_line

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
    """OpenAI-compatible base URL (`http://host:port/v1`); for hosted_vllm, HOSTED_VLLM_API_BASE when unset."""
    api_key: str | None = None
    """Key for the endpoint; litellm's provider variables (OPENAI_API_KEY, ...) are used when unset."""
    max_concurrency: int = 64
    """Most judge requests in flight at once. Above the server's batch size, so the server always has the
    next request queued while this process prepares more (litellm spends a few ms of CPU per call)."""
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
    max_context_length: int = 25000
    """Judge context window in tokens; longer prompts have their long texts cut in the middle."""


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
        if config.model.startswith("hosted_vllm/") and config.model not in litellm.model_cost:
            # A self-hosted judge has no price. Registering it as free spares litellm a failed price
            # look-up on every call (about 40% of its per-call CPU).
            quiet = logging.getLogger("LiteLLM")
            level, quiet.level = quiet.level, logging.ERROR  # it warns that a free model has no cache prices
            litellm.register_model(
                {
                    config.model: {
                        "input_cost_per_token": 0.0,
                        "output_cost_per_token": 0.0,
                        "litellm_provider": "hosted_vllm",
                        "mode": "chat",
                    }
                }
            )
            quiet.setLevel(level)
        self._litellm = litellm
        self.config = config
        self.api_base = config.api_base or (
            os.environ.get("HOSTED_VLLM_API_BASE") if config.model.startswith("hosted_vllm/") else None
        )
        self.stats = JudgeStats()
        self._secrets = [s for s in [config.api_key, *secret_values()] if s]
        # One semaphore per event loop (a semaphore belongs to its loop; the trainer runs two).
        self._semaphores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._in_flight = 0

    @property
    def endpoint(self) -> str:
        return f"{self.config.model} at {self.api_base}" if self.api_base else self.config.model

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

    async def judge(self, build: Callable[..., list[Message]], *texts: str) -> JudgeResult:
        """Call the judge on `build(*texts)`, shortening the texts first if the prompt would not fit."""
        messages, truncated = self.fit_context(build, list(texts))
        result = await self.complete(messages)
        result.truncated = truncated
        self.stats.truncated += int(truncated)
        return result

    async def complete(self, messages: list[Message]) -> JudgeResult:
        loop = asyncio.get_running_loop()
        if loop not in self._semaphores:
            self._semaphores[loop] = asyncio.Semaphore(self.config.max_concurrency)
        semaphore = self._semaphores[loop]
        cfg, start, error = self.config, time.perf_counter(), None
        self.stats.calls += 1
        for attempt in range(cfg.retries + 1):
            if attempt:
                self.stats.retries += 1
                delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (0.5 + random.random()))
            try:
                async with semaphore:
                    self._in_flight += 1
                    self.stats.max_in_flight = max(self.stats.max_in_flight, self._in_flight)
                    try:
                        response = await asyncio.wait_for(self._request(messages), timeout=cfg.timeout)
                    finally:
                        self._in_flight -= 1
            except Exception as exc:  # noqa: BLE001
                error = exc
                if _is_retryable(exc) and attempt < cfg.retries:
                    continue
                break
            return self._success(response, attempt + 1, time.perf_counter() - start)
        return self._failure(error, attempt + 1, time.perf_counter() - start)

    async def _request(self, messages: list[Message]):
        kwargs = dict(
            model=self.config.model,
            messages=messages,
            max_tokens=self.config.max_tokens,
            temperature=self.config.temperature,
            timeout=self.config.timeout,
            num_retries=0,  # retries are ours, with backoff and accounting
        )
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.config.api_key:
            kwargs["api_key"] = self.config.api_key
        elif self.config.model.startswith("hosted_vllm/"):
            kwargs["api_key"] = os.environ.get("HOSTED_VLLM_API_KEY", "EMPTY")
        return await self._litellm.acompletion(**kwargs)

    def _success(self, response, attempts: int, seconds: float) -> JudgeResult:
        text = response.choices[0].message.content or ""
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = float((getattr(response, "_hidden_params", None) or {}).get("response_cost") or 0.0)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.completion_tokens += completion_tokens
        self.stats.cost += cost
        return JudgeResult(text, True, None, attempts, prompt_tokens, completion_tokens, cost, seconds)

    def _failure(self, exc: BaseException | None, attempts: int, seconds: float) -> JudgeResult:
        kind = type(exc).__name__ if exc else "Unknown"
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            message = f"timeout after {self.config.timeout:g}s"
        else:
            message = redact(_short(exc), self._secrets) if exc else "unknown error"
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
